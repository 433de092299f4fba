//! Per-request costs outside the balancer: matching a request against route
//! tables of 1, 10 and 100 routes (path prefix, exact path, anchored regex,
//! host and header conditions), and the header work every forwarded request
//! does (hop-by-hop stripping, route header edits, reading `grpc-timeout`).
//! Run with `cargo bench -p remora-proxy --bench routing`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use remora_proxy::config::{HeaderEditsConfig, HeaderValueConfig, parse_yaml};
use remora_proxy::http::{deadline, hop};
use remora_proxy::listener::ListenerKind;
use remora_proxy::route::{HeaderEdits, RequestView};
use remora_proxy::snapshot::{Mode, Snapshot};
use remora_proxy::telemetry::Telemetry;

/// Route `i` of a table: a mix of the match kinds users write, each naming
/// its own service so that only route `i` matches `/svc{i}/…`.
fn route(i: usize) -> String {
    let matcher = match i % 4 {
        0 => format!("{{path_prefix: /svc{i}/}}"),
        1 => format!(
            "{{path_prefix: /svc{i}/, method: GET, headers: [{{name: x-tenant, exact: blue}}]}}"
        ),
        2 => format!("{{path_regex: '/svc{i}/[a-z]+/[0-9]+'}}"),
        _ => format!("{{host: 'svc{i}.example.com', path_prefix: /svc{i}/}}"),
    };
    format!("      - {{name: r{i}, match: {matcher}, backends: [{{cluster: app}}]}}\n")
}

fn snapshot(routes: usize) -> Snapshot {
    let mut yaml =
        String::from("listeners:\n  - name: web\n    address: 127.0.0.1:1\n    routes:\n");
    for i in 0..routes {
        yaml += &route(i);
    }
    yaml += "clusters:\n  - {name: app, endpoints: ['127.0.0.1:2']}\n";
    Snapshot::compile(
        parse_yaml(&yaml).unwrap(),
        None,
        &Telemetry::new(),
        1,
        Mode::Check,
    )
    .unwrap()
}

fn request_headers(host: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(host).unwrap());
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    headers.insert("x-tenant", HeaderValue::from_static("blue"));
    headers
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    let method = Method::GET;
    for routes in [1, 10, 100] {
        let snapshot = snapshot(routes);
        let ListenerKind::Http(http) = &snapshot.listeners[0].kind else {
            unreachable!("the listener is an HTTP listener")
        };
        let last = routes - 1;
        let cases = [("first", 0), ("last", last), ("none", usize::MAX)];
        for (name, target) in cases {
            let (path, host) = if target == usize::MAX {
                ("/nothing/here".to_string(), "other.example.com".to_string())
            } else {
                (
                    format!("/svc{target}/items/42"),
                    format!("svc{target}.example.com"),
                )
            };
            let uri: Uri = path.parse().unwrap();
            let headers = request_headers(&host);
            let expected = (target != usize::MAX).then_some(target);
            group.bench_with_input(BenchmarkId::new(name, routes), &routes, |b, _| {
                b.iter(|| {
                    let view = RequestView::new(&method, &uri, &headers);
                    let found = http.table.find(black_box(&view)).map(|(index, _)| index);
                    assert_eq!(found, expected);
                    found
                })
            });
        }
    }
    group.finish();
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("headers");
    let plain = request_headers("app.example.com");
    group.bench_function("hop_strip/plain", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |headers| hop::strip(black_box(headers), false),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut named = plain.clone();
    named.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-trace-hop"),
    );
    named.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    named.insert("x-trace-hop", HeaderValue::from_static("1"));
    group.bench_function("hop_strip/connection_names_a_header", |b| {
        b.iter_batched_ref(
            || named.clone(),
            |headers| {
                hop::strip(black_box(headers), false);
                assert!(!headers.contains_key("x-trace-hop"));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let pair = |name: &str, value: &str| HeaderValueConfig {
        name: name.into(),
        value: value.into(),
    };
    let config = HeaderEditsConfig {
        remove: vec!["x-debug".into()],
        set: vec![pair("x-env", "prod")],
        add: vec![pair("x-via", "remora")],
    };
    let mut errors = Vec::new();
    let edits = HeaderEdits::compile(&config, "bench", &mut errors);
    assert!(errors.is_empty());
    group.bench_function("route_edits/remove_set_add", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |headers| edits.apply(black_box(headers)),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut grpc = plain.clone();
    grpc.insert(
        HeaderName::from_static("grpc-timeout"),
        HeaderValue::from_static("250m"),
    );
    group.bench_function("grpc_timeout/parse", |b| {
        b.iter(|| deadline::grpc_timeout(black_box(&grpc)))
    });
    group.finish();
}

criterion_group!(benches, route_match, headers);
criterion_main!(benches);
