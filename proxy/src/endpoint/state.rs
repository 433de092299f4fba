//! The per-endpoint counters that passive and active health keep. They live
//! here, with the endpoint, so that the endpoint type sits below the modules
//! that update it; the logic is in `outlier/` and `health/`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// An endpoint's counters for outlier detection (`outlier/` reads and
/// writes them).
#[derive(Debug, Default)]
pub struct OutlierState {
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    pub(crate) consecutive_local: AtomicU32,
    pub(crate) successes: AtomicU32,
    pub(crate) failures: AtomicU32,
    pub(crate) ejections: AtomicU32,
    /// Milliseconds after the detector's epoch when the ejection ends (0: not ejected).
    pub(crate) ejected_until_ms: AtomicU64,
}

impl OutlierState {
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// An endpoint's run of passes and failures of its active health checks
/// (`health/` reads and writes them).
#[derive(Debug, Default)]
pub struct CheckState {
    pub(crate) passes: AtomicU32,
    pub(crate) failures: AtomicU32,
}

impl CheckState {
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn passes(&self) -> u32 {
        self.passes.load(Ordering::Relaxed)
    }
}
