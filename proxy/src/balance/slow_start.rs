//! Slow start: an endpoint that joins a running cluster gets a growing share
//! of traffic, from `min_weight_percent` to full over `window`, as
//! (elapsed / window)^(1 / aggression), so a cold process (empty caches,
//! unwarmed JIT) is not flooded the moment it appears.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, SlowStartConfig};
use crate::endpoint::Endpoint;

#[derive(Debug, Clone)]
pub(crate) struct SlowStart {
    window: Duration,
    aggression: f64,
    min_factor: f64,
}

/// How often a pick may be refused for slow start before the candidate is taken anyway.
const MAX_REFUSALS: usize = 8;

impl SlowStart {
    pub(crate) fn compile(
        config: &SlowStartConfig,
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<SlowStart> {
        let before = errors.len();
        if config.window.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.window"),
                "must be greater than 0",
            ));
        }
        if !(config.aggression.is_finite() && config.aggression > 0.0) {
            errors.push(ConfigError::new(
                format!("{path}.aggression"),
                format!(
                    "{} must be a number above 0 (1.0 ramps linearly)",
                    config.aggression
                ),
            ));
        }
        if !(1..=100).contains(&config.min_weight_percent) {
            errors.push(ConfigError::new(
                format!("{path}.min_weight_percent"),
                format!("{} is outside 1..=100", config.min_weight_percent),
            ));
        }
        (errors.len() == before).then(|| SlowStart {
            window: config.window,
            aggression: config.aggression,
            min_factor: f64::from(config.min_weight_percent) / 100.0,
        })
    }

    /// The share of its weight `endpoint` gets now: 1.0 once warmed up.
    pub(crate) fn factor(&self, endpoint: &Endpoint) -> f64 {
        let Some(joined) = endpoint.joined else {
            return 1.0;
        };
        let elapsed = Instant::now().saturating_duration_since(joined);
        if elapsed >= self.window {
            return 1.0;
        }
        let time = elapsed.as_secs_f64() / self.window.as_secs_f64();
        time.powf(1.0 / self.aggression).max(self.min_factor)
    }

    /// Takes candidates from `next` until one is admitted with probability
    /// equal to its factor (or [`MAX_REFUSALS`] were refused).
    pub(crate) fn admit<'a, E: AsRef<Endpoint> + 'a>(
        &self,
        mut next: impl FnMut() -> Option<&'a E>,
    ) -> Option<&'a E> {
        let mut candidate = next()?;
        for _ in 0..MAX_REFUSALS {
            let factor = self.factor(candidate.as_ref());
            if factor >= 1.0 || crate::rand::unit() < factor {
                return Some(candidate);
            }
            candidate = next()?;
        }
        Some(candidate)
    }
}
