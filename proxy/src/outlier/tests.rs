use super::*;
use crate::config::parse_yaml;
use crate::endpoint::test_endpoints as endpoints;

fn detector(yaml: &str) -> OutlierDetector {
    let config = parse_yaml(&format!(
        "clusters: [{{name: c, outlier_detection: {yaml}}}]"
    ))
    .unwrap();
    let mut errors = Vec::new();
    let od = config.clusters[0].outlier_detection.as_ref().unwrap();
    OutlierDetector::compile(od, "od", "c", &Telemetry::new(), &mut errors).unwrap()
}

#[test]
fn a_run_of_failures_trips_at_exactly_the_threshold() {
    let d = detector("{consecutive_5xx: 3}");
    let state = OutlierState::default();
    assert_eq!(d.record(&state, Outcome::ServerError), None);
    assert_eq!(d.record(&state, Outcome::LocalOrigin), None);
    assert_eq!(
        d.record(&state, Outcome::Success),
        None,
        "a success resets the run"
    );
    assert_eq!(d.record(&state, Outcome::GatewayError), None);
    assert_eq!(d.record(&state, Outcome::ServerError), None);
    assert_eq!(
        d.record(&state, Outcome::ServerError),
        Some(Reason::Consecutive5xx)
    );
}

#[test]
fn gateway_and_local_origin_runs_count_only_their_failures() {
    let d = detector(
        "{consecutive_5xx: 0, consecutive_gateway_failure: 2, consecutive_local_origin_failure: 2}",
    );
    let state = OutlierState::default();
    assert_eq!(d.record(&state, Outcome::ServerError), None);
    assert_eq!(d.record(&state, Outcome::GatewayError), None);
    assert_eq!(
        d.record(&state, Outcome::ServerError),
        None,
        "a 500 breaks a gateway run"
    );
    assert_eq!(d.record(&state, Outcome::LocalOrigin), None);
    assert_eq!(
        d.record(&state, Outcome::LocalOrigin),
        Some(Reason::ConsecutiveGatewayFailure)
    );
    let state = OutlierState::default();
    let local_only = detector("{consecutive_5xx: 0, consecutive_local_origin_failure: 2}");
    assert_eq!(local_only.record(&state, Outcome::GatewayError), None);
    assert_eq!(local_only.record(&state, Outcome::LocalOrigin), None);
    assert_eq!(
        local_only.record(&state, Outcome::LocalOrigin),
        Some(Reason::ConsecutiveLocalOriginFailure)
    );
}

#[test]
fn ejections_grow_with_each_one_and_are_capped() {
    let d = detector("{base_ejection_time: 10s, max_ejection_time: 25s}");
    let e = endpoints(&[1]);
    let now = Instant::now();
    assert_eq!(
        d.ejecting(&e[0], Reason::Consecutive5xx, now),
        Duration::from_secs(10)
    );
    assert_eq!(
        d.ejecting(&e[0], Reason::Consecutive5xx, now),
        Duration::from_secs(20)
    );
    assert_eq!(
        d.ejecting(&e[0], Reason::Consecutive5xx, now),
        Duration::from_secs(25)
    );
}

#[test]
fn at_most_the_percentage_is_ejected_but_always_one() {
    let d = detector("{max_ejection_percent: 10}");
    assert!(
        d.may_eject(0, 2),
        "one of two: a single bad endpoint still goes"
    );
    assert!(!d.may_eject(1, 2));
    assert!(d.may_eject(1, 20) && !d.may_eject(2, 20));
    let all = detector("{max_ejection_percent: 100}");
    assert!(all.may_eject(2, 3));
}

#[test]
fn the_sweep_restores_endpoints_whose_time_is_up() {
    let d = detector("{base_ejection_time: 1s}");
    let e = endpoints(&[1, 1]);
    let start = Instant::now();
    d.ejecting(&e[0], Reason::Consecutive5xx, start);
    e[0].swap_ejected(true);
    assert!(
        d.sweep(&e, start + Duration::from_millis(500))
            .restore
            .is_empty()
    );
    assert_eq!(
        d.sweep(&e, start + Duration::from_millis(1_100)).restore,
        vec![e[0].address]
    );
}

#[test]
fn success_rate_ejects_the_outlier_among_enough_busy_endpoints() {
    let d = detector(
        "{consecutive_5xx: 0, success_rate: {minimum_hosts: 5, request_volume: 100, stdev_factor: 1.9}}",
    );
    let e = endpoints(&[1; 6]);
    for (i, endpoint) in e.iter().enumerate() {
        for n in 0..200 {
            let fail = if i == 3 { n % 2 == 0 } else { n % 100 == 0 };
            d.record(
                &endpoint.outlier,
                if fail {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                },
            );
        }
    }
    let sweep = d.sweep(&e, Instant::now());
    assert_eq!(sweep.eject, vec![(e[3].address, Reason::SuccessRate)]);
    // The counts start again each interval: a quiet interval ejects nobody.
    assert!(d.sweep(&e, Instant::now()).eject.is_empty());
}

#[test]
fn failure_percentage_ejects_above_the_threshold() {
    let d = detector(
        "{consecutive_5xx: 0, failure_percentage: {threshold: 50, minimum_hosts: 2, request_volume: 10}}",
    );
    let e = endpoints(&[1, 1, 1]);
    for (i, endpoint) in e.iter().enumerate() {
        for n in 0..20 {
            let fail = i == 1 && n < 12;
            d.record(
                &endpoint.outlier,
                if fail {
                    Outcome::LocalOrigin
                } else {
                    Outcome::Success
                },
            );
        }
    }
    assert_eq!(
        d.sweep(&e, Instant::now()).eject,
        vec![(e[1].address, Reason::FailurePercentage)]
    );
}

#[test]
fn bad_settings_are_named() {
    let config = parse_yaml(
        "clusters: [{name: c, outlier_detection: {interval: 0s, base_ejection_time: 10m, max_ejection_percent: 101, success_rate: {stdev_factor: -1}}}]",
    )
    .unwrap();
    let mut errors = Vec::new();
    let od = config.clusters[0].outlier_detection.as_ref().unwrap();
    assert!(OutlierDetector::compile(od, "od", "c", &Telemetry::new(), &mut errors).is_none());
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "od.interval: must be greater than 0",
            "od.base_ejection_time: must be greater than 0 and at most max_ejection_time",
            "od.max_ejection_percent: 101 is outside 0..=100",
            "od.success_rate.stdev_factor: -1 must be a number above 0 (such as 1.9)",
        ]
    );
}
