//! Fuzz targets on the stable toolchain (`remora_proxy::fuzz`): the config
//! parser and compiler, route matching, header handling, and the HTTP/1
//! request path through a real proxy. The test command runs each for a
//! bounded number of inputs; `REMORA_FUZZ_ITERATIONS=100 cargo test -p
//! remora-proxy --test e2e fuzz` runs a hundred times as many.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use remora_proxy::config::parse_yaml;
use remora_proxy::fuzz;
use remora_proxy::http::{deadline, hop};
use remora_proxy::listener::ListenerKind;
use remora_proxy::route::RequestView;
use remora_proxy::snapshot::{Mode, Snapshot};
use remora_proxy::telemetry::Telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestProxy;
use crate::support::raw::RawUpstream;

fn example_configs() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.push(ROUTES.as_bytes().to_vec());
    seeds
}

/// Every kind of match, edit and policy a route can have.
const ROUTES: &str = "
listeners:
  - name: web
    address: 127.0.0.1:0
    routes:
      - {name: exact, match: {host: a.example, path: /exact, method: GET}, direct_response: {status: 200}}
      - {name: regex, match: {path_regex: '/v[0-9]+/.*', headers: [{name: x-a, exact: '1'}, {name: x-c, regex: 'c+'}, {name: x-d, present: true}]}, direct_response: {status: 201}}
      - {name: query, match: {path_prefix: /q, query_params: [{name: k, exact: v}, {name: r, regex: '[a-z]+'}]}, direct_response: {status: 202}}
      - {name: wild, match: {host: '*.example'}, direct_response: {status: 203}}
      - {name: edits, match: {path_prefix: /e}, request_headers: {set: [{name: x-s, value: s}], add: [{name: x-a, value: a}], remove: [x-r]}, direct_response: {status: 204}}
      - {name: rest, direct_response: {status: 404}}
";

#[test]
fn fuzz_the_config_parser_and_compiler() {
    let ran = fuzz::run("config", &example_configs(), 3_000, |input| {
        let Ok(config) = parse_yaml(&String::from_utf8_lossy(input)) else {
            return;
        };
        let _ = Snapshot::compile(config, None, &Telemetry::new(), 1, Mode::Check);
    });
    eprintln!("fuzz config: {ran} inputs");
}

/// One request per input: `METHOD TARGET` on the first line, then
/// `name: value` lines. Inputs that are not a valid request are skipped.
fn request_parts(input: &[u8]) -> Option<(Method, Uri, HeaderMap)> {
    let mut lines = input.split(|&b| b == b'\n');
    let first = lines.next()?;
    let space = first.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&first[..space]).ok()?;
    let uri = Uri::try_from(&first[space + 1..]).ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        headers.append(name, value);
    }
    Some((method, uri, headers))
}

#[test]
fn fuzz_route_matching_and_header_handling() {
    let snapshot = Snapshot::compile(
        parse_yaml(ROUTES).unwrap(),
        None,
        &Telemetry::new(),
        1,
        Mode::Check,
    )
    .unwrap();
    let ListenerKind::Http(http) = &snapshot.listeners[0].kind else {
        panic!("an HTTP listener")
    };
    let seeds: Vec<Vec<u8>> = [
        "GET http://a.example/exact\nhost: a.example",
        "POST /v2/users\nx-a: 1\nx-b: pq\nx-c: ccc\nx-d: \nconnection: x-a, close\nte: trailers",
        "GET /q?k=v&r=abc&k=w\ngrpc-timeout: 100m\ncontent-type: application/grpc",
        "GET /e\nx-r: 1\nhost: b.example:8080\ntransfer-encoding: chunked\ncontent-length: 5",
        "OPTIONS *\nkeep-alive: 5\nupgrade: h2c\nconnection: upgrade",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let ran = fuzz::run("routing", &seeds, 20_000, |input| {
        let Some((method, uri, mut headers)) = request_parts(input) else {
            return;
        };
        let view = RequestView::new(&method, &uri, &headers);
        let _ = http.table.find(&view);
        let _ = deadline::grpc_timeout(&headers);
        let keep_upgrade = input.len() % 2 == 0;
        hop::strip(&mut headers, keep_upgrade);
        assert!(!headers.contains_key("connection") || keep_upgrade);
        assert!(!headers.contains_key("transfer-encoding"));
    });
    eprintln!("fuzz routing: {ran} inputs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_the_http1_request_path_through_a_real_proxy() {
    // A panic anywhere in the proxy (a connection task's panic is otherwise
    // swallowed by tokio) is counted here.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = Arc::new(std::panic::take_hook());
    {
        let previous = previous.clone();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("remora-"))
            {
                PANICS.fetch_add(1, Ordering::Relaxed);
            }
            previous(info)
        }));
    }
    let upstream = RawUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "
listeners:
  - name: web
    address: 127.0.0.1:0
    request_headers_timeout: 200ms
    max_request_headers_kb: 8
    routes:
      - {{name: local, match: {{path_prefix: /local}}, direct_response: {{status: 200, body: ok}}}}
      - {{name: all, backends: [{{cluster: up}}], retry: {{attempts: 1, on: [5xx]}}}}
clusters:
  - {{name: up, endpoints: ['{}']}}
",
        upstream.addr
    ))
    .await;
    let address = proxy.addr("web");
    let seeds: Vec<Vec<u8>> = [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"GET http://a.example/local HTTP/1.1\r\nHost: b\r\nConnection: x-a, keep-alive\r\nx-a: 1\r\n\r\nGET /local HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n",
        b"PUT /up HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    let inputs = std::sync::Mutex::new(Vec::new());
    let ran = fuzz::run("http1", &seeds, 600, |input| {
        inputs.lock().unwrap().push(input.to_vec());
    });
    let inputs = inputs.into_inner().unwrap();
    for batch in inputs.chunks(16) {
        let sends = batch.iter().map(|input| async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
                return;
            };
            let _ = stream.write_all(input).await;
            let _ = stream.shutdown().await;
            let mut reply = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut reply)).await;
        });
        futures_util::future::join_all(sends).await;
    }
    let panics = PANICS.load(Ordering::Relaxed);
    let _ = std::panic::take_hook();
    assert_eq!(panics, 0, "the proxy panicked on fuzzed input");
    let reply = crate::support::raw::exchange(
        address,
        b"GET /local HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "still serving: {reply}");
    eprintln!("fuzz http1: {ran} inputs sent to the proxy");
}
