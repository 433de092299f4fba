use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use super::*;
use crate::config::parse_yaml;
use crate::snapshot::{Mode, Snapshot};

fn cluster_with(telemetry: &Telemetry, yaml: &str) -> Result<Arc<Cluster>, String> {
    let config = parse_yaml(&format!("clusters:\n  - {yaml}\n")).map_err(|e| e.to_string())?;
    let snapshot =
        Snapshot::compile(config, None, telemetry, 1, Mode::Check).map_err(|e| e.to_string())?;
    Ok(snapshot.clusters[0].clone())
}

fn cluster(yaml: &str) -> Arc<Cluster> {
    cluster_with(&Telemetry::new(), yaml).unwrap()
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 80))
}

fn picks(cluster: &Cluster, n: usize) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let active = cluster.pick(None).unwrap();
        *counts.entry(active.endpoint().address).or_default() += 1;
    }
    counts
}

#[test]
fn weighted_round_robin_follows_weights_within_one_percent_over_100k_picks() {
    let c = cluster(
        "{name: c, load_balancer: {policy: weighted_round_robin}, endpoints: [{address: '127.0.0.1:80', weight: 1}, {address: '127.0.0.2:80', weight: 2}, {address: '127.0.0.3:80', weight: 3}, {address: '127.0.0.4:80', weight: 4}]}",
    );
    let counts = picks(&c, 100_000);
    for (i, weight) in [(1u8, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)] {
        let share = counts[&addr(i)] as f64 / 100_000.0;
        assert!(
            (share - weight / 10.0).abs() < 0.01,
            "endpoint {i}: {share}"
        );
    }
    // Smooth: the heaviest endpoint never takes more than two turns in a row.
    let order: Vec<SocketAddr> = (0..100)
        .map(|_| c.pick(None).unwrap().endpoint().address)
        .collect();
    assert!(
        order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{order:?}"
    );
}

#[test]
fn random_and_round_robin_follow_weights() {
    for policy in ["random", "round_robin"] {
        let c = cluster(&format!(
            "{{name: c, load_balancer: {{policy: {policy}}}, endpoints: ['127.0.0.1:80', {{address: '127.0.0.2:80', weight: 3}}]}}"
        ));
        let share = picks(&c, 40_000)[&addr(2)] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{policy}: {share}");
    }
}

#[test]
fn unhealthy_endpoints_leave_the_set_until_too_few_are_healthy() {
    let telemetry = Telemetry::new();
    let c = cluster_with(
        &telemetry,
        "{name: c, endpoints: ['127.0.0.1:80', '127.0.0.2:80', '127.0.0.3:80', '127.0.0.4:80']}",
    )
    .unwrap();
    assert!(c.set_health(addr(1), false));
    assert!(!picks(&c, 100).contains_key(&addr(1)));
    assert_eq!(c.endpoints().healthy(), 3);
    assert!(c.set_health(addr(2), false));
    assert!(
        !c.endpoints().is_panic(),
        "2 of 4 is exactly the 50 % threshold"
    );
    assert!(c.set_health(addr(3), false));
    assert!(c.endpoints().is_panic(), "1 of 4 healthy: panic mode");
    assert_eq!(picks(&c, 100).len(), 4, "panic mode uses every endpoint");
    assert!(
        telemetry
            .render()
            .contains(r#"remora_lb_fallback_total{cluster="c",reason="panic"} 100"#)
    );
    assert!(c.set_health(addr(1), true) && c.set_health(addr(3), true));
    assert!(!c.endpoints().is_panic());
    assert!(
        !c.set_health(addr(9), true),
        "unknown addresses are reported"
    );
}

#[test]
fn a_zero_panic_threshold_never_uses_unhealthy_endpoints() {
    let c = cluster("{name: c, load_balancer: {panic_threshold: 0}, endpoints: ['127.0.0.1:80']}");
    c.set_health(addr(1), false);
    assert!(c.pick(None).is_none());
}

#[test]
fn replacing_endpoints_keeps_the_ones_that_stay() {
    let c = cluster("{name: c, endpoints: ['127.0.0.1:80', '127.0.0.2:80']}");
    let before: Vec<Arc<Endpoint>> = c.endpoints().all().to_vec();
    let one = NonZeroU32::MIN;
    assert!(c.replace_endpoints(&[(addr(2), one), (addr(3), one)]));
    let after = c.endpoints();
    assert_eq!(after.all().len(), 2);
    assert!(
        Arc::ptr_eq(&after.all()[0], &before[1]),
        "127.0.0.2 keeps its endpoint (and pool)"
    );
    assert!(after.all()[0].joined.is_none());
    assert!(
        after.all()[1].joined.is_some(),
        "the new endpoint joined now (slow start)"
    );
    assert!(
        !c.replace_endpoints(&[(addr(2), one), (addr(3), one)]),
        "the same answer changes nothing"
    );
}

#[test]
fn least_request_prefers_the_less_loaded_endpoint() {
    let c = cluster(
        "{name: c, load_balancer: {policy: least_request}, endpoints: ['127.0.0.1:80', '127.0.0.2:80']}",
    );
    let busy = c.endpoints().all()[0].clone();
    let _held: Vec<ActiveRequest> = (0..5).map(|_| busy.begin_request()).collect();
    let counts = picks(&c, 1_000);
    assert_eq!(
        counts.get(&addr(1)),
        None,
        "with two endpoints both are compared every time: {counts:?}"
    );
}

#[test]
fn peak_ewma_prefers_the_faster_endpoint() {
    let c = cluster(
        "{name: c, load_balancer: {policy: peak_ewma, decay: 10s}, endpoints: ['127.0.0.1:80', '127.0.0.2:80']}",
    );
    let now = Instant::now();
    let set = c.endpoints();
    set.all()[0]
        .ewma
        .observe(std::time::Duration::from_millis(200), now, c.lb.decay);
    set.all()[1]
        .ewma
        .observe(std::time::Duration::from_millis(2), now, c.lb.decay);
    let counts = picks(&c, 1_000);
    assert!(
        counts.get(&addr(2)).copied().unwrap_or(0) > 990,
        "{counts:?}"
    );
}

#[test]
fn slow_start_ramps_a_new_endpoint_up() {
    let c = cluster(
        "{name: c, load_balancer: {policy: round_robin, slow_start: {window: 1h, min_weight_percent: 10}}, endpoints: ['127.0.0.1:80']}",
    );
    let one = NonZeroU32::MIN;
    c.replace_endpoints(&[(addr(1), one), (addr(2), one)]);
    let share = picks(&c, 20_000)[&addr(2)] as f64 / 20_000.0;
    assert!(
        (0.05..0.15).contains(&share),
        "a new endpoint starts near its minimum share: {share}"
    );
    let newcomer = c.endpoints().all()[1].clone();
    let factor = c.lb.slow_start.as_ref().unwrap().factor(&newcomer);
    assert!((0.1..0.11).contains(&factor), "{factor}");
}

#[test]
fn a_missing_hash_key_falls_back_and_is_counted() {
    let telemetry = Telemetry::new();
    let c = cluster_with(
        &telemetry,
        "{name: c, load_balancer: {policy: maglev, hash_on: {header: x-user}}, endpoints: ['127.0.0.1:80', '127.0.0.2:80']}",
    )
    .unwrap();
    assert_eq!(picks(&c, 1_000).len(), 2, "random fallback spreads");
    let same: Vec<SocketAddr> = (0..10)
        .map(|_| c.pick(Some(42)).unwrap().endpoint().address)
        .collect();
    assert!(same.windows(2).all(|w| w[0] == w[1]));
    assert!(
        telemetry
            .render()
            .contains(r#"remora_lb_fallback_total{cluster="c",reason="no_hash_key"} 1000"#)
    );
}

#[test]
fn balancer_parameters_are_checked_against_the_policy() {
    let errors = |lb: &str| {
        cluster_with(
            &Telemetry::new(),
            &format!("{{name: c, load_balancer: {lb}}}"),
        )
        .unwrap_err()
    };
    assert_eq!(
        errors("{policy: round_robin, table_size: 65537}"),
        "clusters[0].load_balancer.table_size: only applies to policy maglev (this cluster uses round_robin)"
    );
    assert_eq!(
        errors("{policy: random, hash_on: {header: x}}"),
        "clusters[0].load_balancer.hash_on: only applies to policy ring_hash or maglev (this cluster uses random)"
    );
    assert_eq!(
        errors("{policy: maglev, table_size: 65536}"),
        "clusters[0].load_balancer.table_size: 65536 must be a prime no larger than 5000011 (such as 65537)"
    );
    assert_eq!(
        errors("{policy: ring_hash, minimum_ring_size: 10, maximum_ring_size: 5}"),
        "clusters[0].load_balancer: ring sizes must satisfy 1 <= minimum_ring_size (10) <= maximum_ring_size (5) <= 8388608"
    );
    assert_eq!(
        errors("{policy: least_request, choice_count: 1}"),
        "clusters[0].load_balancer.choice_count: 1 is outside 2..=16"
    );
    assert_eq!(
        errors("{panic_threshold: 101}"),
        "clusters[0].load_balancer.panic_threshold: 101 is outside 0..=100 (percent)"
    );
    assert_eq!(
        errors("{policy: ring_hash, slow_start: {window: 10s}}"),
        "clusters[0].load_balancer.slow_start: only applies to policy round_robin or weighted_round_robin or random or least_request or peak_ewma (this cluster uses ring_hash)"
    );
    assert_eq!(
        errors("{slow_start: {window: 0s, aggression: 0, min_weight_percent: 0}}"),
        [
            "clusters[0].load_balancer.slow_start.window: must be greater than 0",
            "clusters[0].load_balancer.slow_start.aggression: 0 must be a number above 0 (1.0 ramps linearly)",
            "clusters[0].load_balancer.slow_start.min_weight_percent: 0 is outside 1..=100",
        ]
        .join("\n")
    );
}

#[test]
fn pool_dns_and_tuning_settings_are_checked() {
    let errors = |fields: &str| {
        cluster_with(&Telemetry::new(), &format!("{{name: c, {fields}}}")).unwrap_err()
    };
    assert_eq!(
        errors("endpoints: ['127.0.0.1:80'], dns: a.b:80"),
        "clusters[0]: set either endpoints or dns, not both"
    );
    assert_eq!(
        errors("dns: 'not a name:80'"),
        "clusters[0].dns: invalid DNS address \"not a name:80\": expected NAME:PORT such as api.internal:8080"
    );
    assert_eq!(
        errors("dns: api.internal"),
        "clusters[0].dns: invalid DNS address \"api.internal\": expected NAME:PORT such as api.internal:8080"
    );
    assert_eq!(
        errors("dns: {address: 'a.b:80', min_refresh: 10s, max_refresh: 1s}"),
        "clusters[0].dns: refresh bounds must satisfy 0 < min_refresh (10s) <= max_refresh (1s)"
    );
    assert_eq!(
        errors("pool: {max_connections: 2, min_idle: 3, max_requests_per_connection: 0}"),
        [
            "clusters[0].pool.max_requests_per_connection: must be at least 1 (leave it out for no limit)",
            "clusters[0].pool.min_idle: 3 is more than max_connections (2)",
        ]
        .join("\n")
    );
    assert_eq!(
        errors(
            "http2: {initial_stream_window_size: 10}, keepalive: {tcp: {probes: 0}, http2: {interval: 0s}}"
        ),
        [
            "clusters[0].http2.initial_stream_window_size: 10 is outside 65535..=2147483647",
            "clusters[0].keepalive.tcp.probes: must be at least 1",
            "clusters[0].keepalive.http2.interval: must be greater than 0",
        ]
        .join("\n")
    );
}

// Timer-driven behaviour, in virtual time: the clock is paused and moves
// only when every task waits, so these runs are exact and take no time.

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_returns_when_its_ejection_time_is_up_and_the_next_lasts_longer() {
    use crate::discovery::ResolverHandle;
    use crate::outlier::Outcome;
    use crate::worker::Workers;
    use std::time::Duration;

    let c = cluster(
        "{name: c, endpoints: ['127.0.0.1:80', '127.0.0.2:80', '127.0.0.3:80'], \
         outlier_detection: {consecutive_5xx: 3, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50}}",
    );
    c.activate(&ResolverHandle::default(), &Workers::default());
    let bad = c.endpoints().all()[0].clone();
    let fail_three_times = || {
        for _ in 0..3 {
            c.record_outcome(&bad, Outcome::ServerError);
        }
    };
    fail_three_times();
    assert!(bad.is_ejected());
    assert!(
        !picks(&c, 100).contains_key(&bad.address),
        "out of the balancer"
    );

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(bad.is_ejected(), "29 s into a 30 s ejection");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!bad.is_ejected(), "back at the first sweep after 30 s");
    assert!(picks(&c, 300).contains_key(&bad.address));

    // Failing again at once: the second ejection is base × 2.
    fail_three_times();
    assert!(bad.is_ejected());
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(bad.is_ejected(), "59 s into a 60 s ejection");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!bad.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_over_its_window_in_time() {
    use std::time::Duration;

    let c = cluster(
        "{name: c, load_balancer: {policy: round_robin, slow_start: {window: 10s, min_weight_percent: 10}}, endpoints: ['127.0.0.1:80']}",
    );
    let one = NonZeroU32::MIN;
    c.replace_endpoints(&[(addr(1), one), (addr(2), one)]);
    let newcomer = c.endpoints().all()[1].clone();
    let slow_start = c.lb.slow_start.clone().unwrap();
    let factor = || slow_start.factor(&newcomer);
    assert!((0.1..0.11).contains(&factor()), "starts at its minimum");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!((0.49..0.51).contains(&factor()), "half way: {}", factor());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(factor(), 1.0, "warmed up after the window");
    let share = picks(&c, 10_000)[&addr(2)] as f64 / 10_000.0;
    assert!((0.45..0.55).contains(&share), "full share: {share}");
}

#[tokio::test(start_paused = true)]
async fn health_checks_run_every_interval_and_flip_an_endpoint_at_their_thresholds() {
    use crate::discovery::ResolverHandle;
    use crate::worker::Workers;
    use socket2::{Domain, Socket, Type};
    use std::time::Duration;

    // Bound but not listening: connects are refused until `listen`.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let c = cluster(&format!(
        "{{name: c, endpoints: ['{address}'], health_check: {{interval: 10s, timeout: 1s, \
         jitter: 0s, unhealthy_threshold: 2, healthy_threshold: 1, tcp: {{}}}}}}"
    ));
    c.activate(&ResolverHandle::default(), &Workers::default());
    let endpoint = c.endpoints().all()[0].clone();

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        endpoint.checks.failures(),
        1,
        "the first check runs at once"
    );
    assert!(
        !endpoint.is_check_failed(),
        "one failure is under the threshold"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(endpoint.checks.failures(), 2, "one check per interval");
    assert!(
        endpoint.is_check_failed(),
        "two failures reach the threshold"
    );

    socket.listen(16).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(endpoint.checks.passes(), 1);
    assert!(!endpoint.is_check_failed(), "one pass brings it back");
}

#[tokio::test(start_paused = true)]
async fn warm_upstream_connections_close_after_idle_timeout() {
    use crate::discovery::ResolverHandle;
    use crate::worker::Workers;
    use std::time::Duration;

    // (HTTP/2 PING keepalive is hyper's: its timer reads the real clock, so
    // pools.rs tests it end to end instead.) An upstream that accepts and
    // then never says a word.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = upstream.accept().await {
            held.push(stream);
        }
    });
    let http1 = cluster(&format!(
        "{{name: one, protocol: http1, endpoints: ['{address}'], pool: {{min_idle: 2, idle_timeout: 30s}}}}"
    ));
    http1.activate(&ResolverHandle::default(), &Workers::default());
    let endpoint = http1.endpoints().all()[0].clone();
    let pool = &endpoint.pool;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pool.sizes().idle_http1,
        2,
        "min_idle connections are opened ahead of traffic"
    );
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert_eq!(
        pool.sizes().idle_http1,
        2,
        "29 s idle of a 30 s idle_timeout"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.sizes().idle_http1, 0, "closed by the idle sweep");
    assert_eq!(pool.sizes().open, 0);
}
