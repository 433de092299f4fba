//! Global rate limits: one token bucket per key in Redis, shared by every
//! proxy, updated atomically by a Lua script on Redis's own clock.
//!
//! To keep Redis off the per-request path, a proxy takes tokens in leases:
//! one script call takes up to `lease` tokens from the bucket, and the
//! proxy admits from its lease with an atomic decrement until it runs out
//! or expires (`LEASE_TTL`). The lease is sized from the key's recent rate
//! at this proxy (about `LEASE_PERIOD` of traffic, at most a tenth of the
//! burst), so a busy key costs a few round trips a second and a quiet one
//! one per request. Tokens are taken from the shared bucket before they are
//! spent, so the proxies together never admit more than the bucket allows;
//! what a lease leaves unspent when it expires is lost (at most one lease
//! per proxy and key each `LEASE_TTL`).
//!
//! Redis errors, timeouts and restarts never hold a request longer than
//! `timeout`: the request gets the `failure` verdict (`open` admits,
//! `closed` answers 429), and for `DOWN_BACKOFF` after a failure the
//! verdict is given without trying Redis. The script is loaded by its SHA
//! and reloaded when Redis answers `NOSCRIPT` (after a restart or `SCRIPT
//! FLUSH`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use metrics::Counter;

use crate::config::{ConfigError, GlobalFailure, GlobalRateLimitConfig};

/// A lease is spent within about this much traffic.
const LEASE_PERIOD: Duration = Duration::from_millis(100);
/// A lease holds at least this much of the limit's whole rate.
const MIN_LEASE: Duration = Duration::from_millis(50);
/// A lease's unspent tokens are dropped after this long.
const LEASE_TTL: Duration = Duration::from_secs(1);
/// After a Redis failure, requests get the failure verdict without trying
/// Redis for this long.
const DOWN_BACKOFF: Duration = Duration::from_millis(500);
/// Keys idle this long are forgotten (their Redis key expires on its own).
const KEY_IDLE: Duration = Duration::from_secs(60);

/// Takes up to ARGV[3] tokens from the bucket at KEYS[1] (rate ARGV[1] a
/// second, capacity ARGV[2]); answers {granted, milliseconds until as many
/// as asked for are due} (the wait only when none was granted).
const SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
end
local granted = math.min(want, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if granted == 0 then
  wait = math.ceil((math.min(want, burst) - tokens) / rate * 1000)
end
return {granted, wait}
";

/// One Redis client per URL, shared by every limit that names it.
fn connection(
    url: &str,
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::ConnectionManager> {
    static ALL: OnceLock<Mutex<HashMap<String, redis::aio::ConnectionManager>>> = OnceLock::new();
    let mut all = crate::sync::lock(ALL.get_or_init(Default::default));
    if let Some(manager) = all.get(url) {
        return Ok(manager.clone());
    }
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let manager = client.get_connection_manager_lazy(config)?;
    all.insert(url.to_string(), manager.clone());
    Ok(manager)
}

/// A limit's shared part: where the buckets are and what to do when Redis
/// cannot be asked.
pub(crate) struct Global {
    url: String,
    client: redis::Client,
    script: redis::Script,
    /// `remora:rl:SCOPE:` (the key follows).
    prefix: String,
    rate: f64,
    burst: u32,
    timeout: Duration,
    failure: GlobalFailure,
    one: KeyState,
    keyed: DashMap<Box<[u8]>, Arc<KeyState>>,
    down_until: AtomicU64,
    epoch: Instant,
    calls: Counter,
    failures: Counter,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A key's lease at this proxy.
struct KeyState {
    tokens: AtomicI64,
    /// Milliseconds since the epoch when the lease lapses.
    expires: AtomicU64,
    /// When the script said no token is due before then.
    empty_until: AtomicU64,
    /// The last lease's size and when it was taken: the rate estimate.
    last_lease: AtomicU64,
    last_fetch: AtomicU64,
    last_used: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
}

impl KeyState {
    fn new() -> KeyState {
        KeyState {
            tokens: AtomicI64::new(0),
            expires: AtomicU64::new(0),
            empty_until: AtomicU64::new(0),
            last_lease: AtomicU64::new(0),
            last_fetch: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// One token from a live lease.
    fn take(&self, now: u64) -> bool {
        if now >= self.expires.load(Ordering::Acquire) {
            return false;
        }
        if self.tokens.fetch_sub(1, Ordering::AcqRel) > 0 {
            return true;
        }
        self.tokens.fetch_add(1, Ordering::AcqRel);
        false
    }
}

/// Why a request is not admitted: how long until it could be.
pub(crate) type Wait = Duration;

impl Global {
    /// `scope` names the listener or route, so limits do not share buckets.
    pub(crate) fn compile(
        config: &GlobalRateLimitConfig,
        rate: f64,
        burst: u32,
        scope: &str,
        path: &str,
        (calls, failures): (Counter, Counter),
        errors: &mut Vec<ConfigError>,
    ) -> Option<Global> {
        let client = match redis::Client::open(config.redis.as_str()) {
            Ok(client) => client,
            Err(error) => {
                errors.push(ConfigError::new(
                    format!("{path}.redis"),
                    format!(
                        "{:?} is not a Redis URL (redis://HOST:PORT/DB): {error}",
                        config.redis
                    ),
                ));
                return None;
            }
        };
        if config.timeout.is_zero() {
            errors.push(ConfigError::new(
                format!("{path}.timeout"),
                "must be greater than 0",
            ));
        }
        // Redis may come later: an unreachable one is a warning, not a
        // refusal (its requests get the failure verdict meanwhile).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, url) = (client.clone(), config.redis.clone());
            runtime.spawn(async move {
                let probe = async {
                    let mut connection = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut connection).await
                };
                match tokio::time::timeout(Duration::from_secs(2), probe).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(
                        redis = %url, %error,
                        "global rate limit: Redis unreachable; requests get the failure verdict until it answers"
                    ),
                    Err(_) => tracing::warn!(
                        redis = %url,
                        "global rate limit: Redis did not answer in 2 s; requests get the failure verdict until it does"
                    ),
                }
            });
        }
        Some(Global {
            url: config.redis.clone(),
            client,
            script: redis::Script::new(SCRIPT),
            prefix: format!("remora:rl:{scope}:"),
            rate,
            burst,
            timeout: config.timeout,
            failure: config.failure,
            one: KeyState::new(),
            keyed: DashMap::new(),
            down_until: AtomicU64::new(0),
            epoch: Instant::now(),
            calls,
            failures,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Admits a request for `key` (`None`: the limit's only bucket).
    pub(crate) async fn check(&self, key: Option<&[u8]>) -> Result<(), Wait> {
        let now = self.now_ms();
        let keyed;
        let state: &KeyState = match key {
            None => &self.one,
            Some(key) => {
                keyed = self.key_state(key, now);
                &keyed
            }
        };
        state.last_used.store(now, Ordering::Relaxed);
        if state.take(now) {
            return Ok(());
        }
        let empty_until = state.empty_until.load(Ordering::Acquire);
        if now < empty_until {
            return Err(Duration::from_millis(empty_until - now));
        }
        if now < self.down_until.load(Ordering::Acquire) {
            return self.verdict();
        }
        // One fetch per key at a time; whoever waited may find a new lease.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let Ok(_fetching) = tokio::time::timeout_at(deadline, state.fetching.lock()).await else {
            return self.verdict();
        };
        let now = self.now_ms();
        if state.take(now) {
            return Ok(());
        }
        let want = self.lease_size(state, now);
        let redis_key = self.redis_key(key);
        let answer = tokio::time::timeout_at(deadline, self.call(&redis_key, want)).await;
        match answer {
            Ok(Ok((granted, wait_ms))) => {
                let now = self.now_ms();
                state
                    .last_lease
                    .store(granted.max(0) as u64, Ordering::Relaxed);
                state.last_fetch.store(now, Ordering::Relaxed);
                if granted <= 0 {
                    let until = now + wait_ms.max(1) as u64;
                    state.empty_until.store(until, Ordering::Release);
                    return Err(Duration::from_millis(wait_ms.max(1) as u64));
                }
                // One for this request, the rest for the next ones.
                state.tokens.store(granted - 1, Ordering::Release);
                state
                    .expires
                    .store(now + LEASE_TTL.as_millis() as u64, Ordering::Release);
                Ok(())
            }
            Ok(Err(error)) => {
                tracing::warn!(redis = %self.url, %error, "global rate limit: Redis failed");
                self.down();
                self.verdict()
            }
            Err(_) => {
                tracing::debug!(redis = %self.url, timeout = ?self.timeout, "global rate limit: Redis too slow");
                self.down();
                self.verdict()
            }
        }
    }

    fn down(&self) {
        self.down_until.store(
            self.now_ms() + DOWN_BACKOFF.as_millis() as u64,
            Ordering::Release,
        );
    }

    /// What a request gets when Redis cannot be asked (counted).
    fn verdict(&self) -> Result<(), Wait> {
        self.failures.increment(1);
        match self.failure {
            GlobalFailure::Open => Ok(()),
            GlobalFailure::Closed => Err(Duration::from_secs(1)),
        }
    }

    fn key_state(&self, key: &[u8], now: u64) -> Arc<KeyState> {
        if let Some(state) = self.keyed.get(key) {
            return state.clone();
        }
        // Forget idle keys now and then, so distinct keys cannot grow memory.
        if self.keyed.len() >= 1024 && self.keyed.len().is_power_of_two() {
            self.keyed.retain(|_, s| {
                now.saturating_sub(s.last_used.load(Ordering::Relaxed))
                    < KEY_IDLE.as_millis() as u64
            });
        }
        self.keyed
            .entry(key.into())
            .or_insert_with(|| Arc::new(KeyState::new()))
            .clone()
    }

    fn redis_key(&self, key: Option<&[u8]>) -> Vec<u8> {
        let mut out = self.prefix.as_bytes().to_vec();
        if let Some(key) = key {
            out.extend_from_slice(key);
        }
        out
    }

    /// About `LEASE_PERIOD` of this key's recent traffic here, and at
    /// least `MIN_LEASE` of the limit's whole rate (so an exhausted bucket
    /// is asked again when that much is due, not for every token); at most
    /// a tenth of the burst, at least 1.
    fn lease_size(&self, state: &KeyState, now: u64) -> i64 {
        let last = state.last_lease.load(Ordering::Relaxed) as f64;
        let since = now
            .saturating_sub(state.last_fetch.load(Ordering::Relaxed))
            .max(1) as f64;
        let rate_here = last * 1000.0 / since;
        let want = (rate_here * LEASE_PERIOD.as_secs_f64() * 2.0)
            .max(self.rate * MIN_LEASE.as_secs_f64())
            .ceil();
        let cap = (f64::from(self.burst) / 10.0).floor().max(1.0);
        want.clamp(1.0, cap) as i64
    }

    async fn call(&self, key: &[u8], want: i64) -> redis::RedisResult<(i64, i64)> {
        let mut connection = connection(&self.url, &self.client)?;
        self.calls.increment(1);
        self.script
            .key(key)
            .arg(self.rate)
            .arg(self.burst)
            .arg(want)
            .invoke_async(&mut connection)
            .await
    }
}
