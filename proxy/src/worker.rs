//! The data-plane workers: threads that each run a current-thread tokio
//! runtime and accept on their own socket of every listener. A connection,
//! and the upstream connections its requests open, stay on the worker that
//! accepted it; each thread knows its worker index, which the pools use to
//! prefer a worker's own connections.
//!
//! With one worker there are no worker threads: the proxy serves on the
//! runtime it was started on.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The worker this thread runs (0 when there are no worker threads).
    static WORKER: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The worker running on this thread.
pub(crate) fn current() -> u32 {
    WORKER.get()
}

/// The proxy's worker threads; they stop when the last clone is dropped.
/// The default is none: everything runs on the caller's runtime.
#[derive(Clone, Debug, Default)]
pub struct Workers {
    inner: Option<Arc<Threads>>,
}

#[derive(Debug)]
struct Threads {
    runtimes: Vec<Handle>,
    /// Dropping these ends the threads' runtimes.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` worker threads, or none for one worker (which then
    /// runs on the caller's runtime, as the sidecar default does).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        if count <= 1 {
            return Ok(Workers::default());
        }
        let mut runtimes = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            stop.push(stop_tx);
            std::thread::Builder::new()
                .name(format!("remora-worker-{index}"))
                .spawn(move || {
                    WORKER.set(index as u32);
                    let _ = runtime.block_on(stop_rx);
                })?;
        }
        Ok(Workers {
            inner: Some(Arc::new(Threads {
                runtimes,
                _stop: stop,
            })),
        })
    }

    /// The workers' runtimes in index order (empty without worker threads).
    pub(crate) fn runtimes(&self) -> &[Handle] {
        self.inner.as_ref().map_or(&[], |t| &t.runtimes)
    }

    /// How many sockets each listener binds: one per worker.
    pub(crate) fn count(&self) -> usize {
        self.runtimes().len().max(1)
    }

    /// Runs `task` once on every worker (so what it opens belongs to that
    /// worker), or on the current runtime without worker threads.
    pub(crate) fn spawn_on_each<F, Fut>(&self, task: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.runtimes() {
            [] => {
                tokio::spawn(task());
            }
            runtimes => {
                for runtime in runtimes {
                    runtime.spawn(task());
                }
            }
        }
    }
}
