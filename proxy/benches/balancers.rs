//! Load-balancer costs: one pick per policy with 3, 100 and 10,000
//! endpoints, and rebuilding the consistent-hash structures when one of
//! 10,000 endpoints changes. Run with `cargo bench -p remora-proxy --bench balancers`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use remora_proxy::cluster::Cluster;
use remora_proxy::config::parse_yaml;
use remora_proxy::snapshot::{Mode, Snapshot};
use remora_proxy::telemetry::Telemetry;

const POLICIES: &[&str] = &[
    "round_robin",
    "weighted_round_robin",
    "random",
    "least_request",
    "peak_ewma",
    "ring_hash",
    "maglev",
];

fn address(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

fn cluster(policy: &str, endpoints: usize) -> Arc<Cluster> {
    let list: Vec<String> = (0..endpoints)
        .map(|i| format!("{{address: '{}', weight: {}}}", address(i), 1 + i % 3))
        .collect();
    let yaml = format!(
        "clusters:\n  - {{name: c, load_balancer: {{policy: {policy}}}, endpoints: [{}]}}\n",
        list.join(", ")
    );
    let snapshot = Snapshot::compile(
        parse_yaml(&yaml).unwrap(),
        None,
        &Telemetry::new(),
        1,
        Mode::Check,
    )
    .unwrap();
    snapshot.clusters[0].clone()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for &policy in POLICIES {
        for endpoints in [3, 100, 10_000] {
            let cluster = cluster(policy, endpoints);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(policy, endpoints), &endpoints, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(cluster.pick(Some(key)))
                })
            });
        }
    }
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild_10000_endpoints");
    group.sample_size(10);
    for policy in ["round_robin", "ring_hash", "maglev"] {
        let cluster = cluster(policy, 10_000);
        let weight = |i: usize| NonZeroU32::new(1 + (i % 3) as u32).unwrap();
        let with_last = |last: usize| -> Vec<(SocketAddr, NonZeroU32)> {
            (0..9_999)
                .map(|i| (address(i), weight(i)))
                .chain(std::iter::once((address(last), weight(last))))
                .collect()
        };
        let (a, b) = (with_last(9_999), with_last(10_000));
        let mut flip = false;
        group.bench_function(policy, |bench| {
            bench.iter(|| {
                flip = !flip;
                black_box(cluster.replace_endpoints(if flip { &b } else { &a }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, rebuild);
criterion_main!(benches);
