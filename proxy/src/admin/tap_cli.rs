//! `remora-proxy tap`: opens `GET /tap` on a proxy's admin port and prints
//! the request summaries as a live table, one row per request.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::BodyExt;

/// What to watch (the query of `GET /tap`).
#[derive(Debug, Clone, Default)]
pub struct TapRequest {
    /// `HOST:PORT` of the admin server.
    pub admin: String,
    pub listener: Option<String>,
    pub route: Option<String>,
    pub path_prefix: Option<String>,
    pub limit: Option<u64>,
    pub duration: Option<Duration>,
}

impl TapRequest {
    fn path(&self) -> String {
        let mut query = Vec::new();
        for (name, value) in [
            ("listener", self.listener.clone()),
            ("route", self.route.clone()),
            ("path_prefix", self.path_prefix.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            (
                "duration",
                self.duration.map(|d| format!("{}ms", d.as_millis().max(1))),
            ),
        ] {
            if let Some(value) = value {
                query.push(format!("{name}={}", encode(&value)));
            }
        }
        if query.is_empty() {
            "/tap".into()
        } else {
            format!("/tap?{}", query.join("&"))
        }
    }
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The table's header row.
pub const HEADER: &str = "TIME          DIR  STATUS  METHOD  AUTHORITY/PATH                                  LATENCY  UPSTREAM               BYTES  TRACE";

/// One summary line as a table row; the stream's last line as its footer.
pub fn format_line(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["end"].as_bool() == Some(true) {
        return Some(format!(
            "-- {} requests shown, {} dropped by the tap's rate or queue",
            v["sent"], v["dropped"]
        ));
    }
    let time = v["time"].as_str().unwrap_or_default();
    let time = time.get(11..23).unwrap_or(time);
    let direction = match v["direction"].as_str() {
        Some("inbound") => "in",
        _ => "out",
    };
    let status = match v["grpc_status"].as_u64() {
        Some(code) => format!("{}/g{code}", v["status"]),
        None => v["status"].to_string(),
    };
    let target = format!(
        "{}{}",
        v["authority"].as_str().unwrap_or_default(),
        v["path"].as_str().unwrap_or_default()
    );
    Some(format!(
        "{time:<13} {direction:<4} {status:<7} {:<7} {target:<46} {:>7.1}ms  {:<21} {:>6}  {}",
        v["method"].as_str().unwrap_or_default(),
        v["latency_ms"].as_f64().unwrap_or_default(),
        v["upstream"].as_str().unwrap_or("-"),
        v["bytes_sent"],
        v["trace_id"].as_str().unwrap_or("-"),
    ))
}

/// Streams the tap to `out` until the proxy ends it.
pub async fn run(request: &TapRequest, out: &mut impl Write) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(&request.admin)
        .await
        .with_context(|| format!("cannot reach the admin server at {}", request.admin))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let http = http::Request::get(request.path())
        .header(http::header::HOST, request.admin.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(http).await?;
    if !response.status().is_success() {
        let body = response.into_body().collect().await?.to_bytes();
        bail!(
            "the admin server said: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    writeln!(out, "{HEADER}")?;
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some(row) = format_line(&String::from_utf8_lossy(&line)) {
                writeln!(out, "{row}")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_carries_the_filters() {
        let request = TapRequest {
            admin: "127.0.0.1:15000".into(),
            route: Some("my route".into()),
            path_prefix: Some("/api".into()),
            limit: Some(5),
            duration: Some(Duration::from_secs(2)),
            ..TapRequest::default()
        };
        assert_eq!(
            request.path(),
            "/tap?route=my%20route&path_prefix=/api&limit=5&duration=2000ms"
        );
    }

    #[test]
    fn lines_become_rows() {
        let row = format_line(r#"{"time":"2026-12-01T10:00:00.123Z","direction":"inbound","listener":"l","route":"r","method":"POST","authority":"svc","path":"/pkg.S/M","status":200,"grpc_status":14,"latency_ms":3.25,"cluster":"c","upstream":"10.0.0.1:80","bytes_sent":12,"trace_id":"abc"}"#).unwrap();
        assert!(
            row.starts_with("10:00:00.123  in   200/g14 POST    svc/pkg.S/M"),
            "{row}"
        );
        assert!(row.contains("3.2ms") || row.contains("3.3ms"), "{row}");
        assert!(row.ends_with("abc"), "{row}");
        assert!(
            format_line(r#"{"end":true,"sent":3,"dropped":0}"#)
                .unwrap()
                .contains("3 requests")
        );
        assert!(format_line("not json").is_none());
    }
}
