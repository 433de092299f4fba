//! The access log: one JSON line per HTTP request or opaque TCP connection, written by a thread of its
//! own so a slow disk never stalls the data path. When the writer falls
//! behind by more than [`QUEUE_LINES`] lines, new lines are dropped and
//! counted in the log itself.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLogConfig;

const QUEUE_LINES: usize = 16 * 1024;

pub(crate) struct AccessLog {
    lines: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
}

/// What one request's line says.
#[derive(Serialize)]
pub(crate) struct AccessRecord<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub(crate) time: SystemTime,
    pub(crate) listener: &'a str,
    pub(crate) route: &'a str,
    pub(crate) downstream: String,
    pub(crate) protocol: &'a str,
    pub(crate) method: &'a str,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) duration_ms: f64,
    pub(crate) cluster: &'a str,
    pub(crate) upstream: Option<String>,
    pub(crate) bytes_sent: u64,
    /// For a request that failed: `client`, `proxy` or `upstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failed_by: Option<&'static str>,
    /// What failed (`connect_failure`, `client_body`, `client_cancelled`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failure: Option<&'static str>,
    /// A captured connection's `inbound` or `outbound`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) direction: Option<&'static str>,
    /// A captured connection's original destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) original_dst: Option<String>,
    /// The SPIFFE ID an mTLS client presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer_identity: Option<&'a str>,
    /// The request's `x-request-id` (given, or generated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<&'a str>,
    /// On a route with a response cache: `hit`, `miss`, `stale`, `bypass`,
    /// or `refresh` (a background refresh for `stale_while_revalidate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<&'static str>,
    /// With `tracing:`: the request's trace and its server span (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) span_id: Option<&'a str>,
}

/// What one opaque TCP connection's line says (`"protocol": "tcp"` or
/// `"tls"`), written when it closes.
#[derive(Serialize)]
pub(crate) struct ConnectionRecord<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub(crate) time: SystemTime,
    pub(crate) listener: &'a str,
    pub(crate) downstream: String,
    pub(crate) protocol: &'static str,
    /// The server name of a TLS ClientHello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sni: Option<&'a str>,
    /// `timeout` (nothing within `detect_timeout`), `opaque_port`, `server_first`
    /// (the server spoke before the client) or `detected`; absent without
    /// detection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detect: Option<&'static str>,
    pub(crate) duration_ms: f64,
    /// `passthrough` for a connection sent on to its original destination.
    pub(crate) cluster: &'a str,
    pub(crate) upstream: Option<String>,
    /// Bytes from the client, and to it.
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) failure: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) original_dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) peer_identity: Option<&'a str>,
}

impl AccessLog {
    pub(crate) fn open(config: &AccessLogConfig) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match config.path.as_str() {
            "-" | "/dev/stdout" => Box::new(io::stdout()),
            "/dev/stderr" => Box::new(io::stderr()),
            path => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (lines, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("remora-access-log".into())
            .spawn(move || write_lines(rx, BufWriter::new(out)))?;
        Ok(AccessLog {
            lines,
            dropped: AtomicU64::new(0),
        })
    }

    pub(crate) fn write(&self, record: &impl Serialize) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "access log lines dropped because the writer fell behind"
            );
        }
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, mut out: BufWriter<Box<dyn Write + Send>>) {
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(&line);
        while let Ok(line) = rx.try_recv() {
            result = result.and_then(|()| out.write_all(&line));
        }
        if let Err(error) = result.and_then(|()| out.flush()) {
            tracing::warn!(%error, "cannot write the access log");
        }
    }
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_rfc3339_millis(*time))
}

/// `2026-11-22T03:48:00.123Z`
pub(crate) fn format_rfc3339_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            format_rfc3339_millis(UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = UNIX_EPOCH + Duration::from_millis(1_795_318_080_123);
        assert_eq!(format_rfc3339_millis(t), "2026-11-22T03:28:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }
}
