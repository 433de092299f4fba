//! The control plane's metrics, rendered in the Prometheus text format at
//! the admin server's `/metrics`. Plain atomics: a push records a few
//! increments and one histogram observation.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use remora_xds_proto::type_url;

/// Upper bounds of the push-latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    pub connected: AtomicI64,
    /// By type, in `type_url::SERVED` order.
    pub pushes: [AtomicU64; 5],
    pub nacks: [AtomicU64; 5],
    pub unknown_type_requests: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub mesh_version: AtomicU64,
    /// The source (a Kubernetes API server) is not answering, or not yet
    /// listed: the last mesh is served, and `/ready` says 503.
    pub source_out_of_sync: std::sync::atomic::AtomicBool,
    /// This replica holds the leader lease (a Kubernetes source).
    pub leader: std::sync::atomic::AtomicBool,
    /// Status subresource writes, and the ones that failed.
    pub status_writes: AtomicU64,
    pub status_write_errors: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// The certificate authority's outcomes.
    pub signing: std::sync::Arc<crate::ca::service::SignCounts>,
    /// The sidecar injector's answers.
    pub injections: std::sync::Arc<crate::inject::server::InjectCounts>,
}

impl Metrics {
    pub fn push(&self, type_index: usize) {
        self.pushes[type_index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn nack(&self, type_index: usize) {
        self.nacks[type_index].fetch_add(1, Ordering::Relaxed);
    }

    /// Time from a mesh version's publication to a response carrying it
    /// being handed to the stream.
    pub fn observe_push_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP remora_cp_connected_proxies ADS streams open now."
        );
        let _ = writeln!(out, "# TYPE remora_cp_connected_proxies gauge");
        let _ = writeln!(
            out,
            "remora_cp_connected_proxies {}",
            self.connected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP remora_cp_pushes_total Responses sent, by resource type."
        );
        let _ = writeln!(out, "# TYPE remora_cp_pushes_total counter");
        for (i, t) in type_url::SERVED.iter().enumerate() {
            let _ = writeln!(
                out,
                "remora_cp_pushes_total{{type=\"{}\"}} {}",
                type_url::short(t),
                get(&self.pushes[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP remora_cp_nacks_total Responses a proxy rejected, by resource type."
        );
        let _ = writeln!(out, "# TYPE remora_cp_nacks_total counter");
        for (i, t) in type_url::SERVED.iter().enumerate() {
            let _ = writeln!(
                out,
                "remora_cp_nacks_total{{type=\"{}\"}} {}",
                type_url::short(t),
                get(&self.nacks[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP remora_cp_unknown_type_requests_total Requests for a type the server does not serve."
        );
        let _ = writeln!(out, "# TYPE remora_cp_unknown_type_requests_total counter");
        let _ = writeln!(
            out,
            "remora_cp_unknown_type_requests_total {}",
            get(&self.unknown_type_requests)
        );
        let _ = writeln!(
            out,
            "# HELP remora_cp_mesh_reloads_total Mesh file reads, by result."
        );
        let _ = writeln!(out, "# TYPE remora_cp_mesh_reloads_total counter");
        let _ = writeln!(
            out,
            "remora_cp_mesh_reloads_total{{result=\"ok\"}} {}",
            get(&self.reloads_ok)
        );
        let _ = writeln!(
            out,
            "remora_cp_mesh_reloads_total{{result=\"rejected\"}} {}",
            get(&self.reloads_failed)
        );
        let _ = writeln!(
            out,
            "# HELP remora_cp_source_in_sync 1 when the mesh's source answers and is fully read (a Kubernetes API server: every kind listed and watched)."
        );
        let _ = writeln!(out, "# TYPE remora_cp_source_in_sync gauge");
        let _ = writeln!(
            out,
            "remora_cp_source_in_sync {}",
            u8::from(!self.source_out_of_sync.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP remora_cp_leader 1 on the replica that holds the leader lease and writes status."
        );
        let _ = writeln!(out, "# TYPE remora_cp_leader gauge");
        let _ = writeln!(
            out,
            "remora_cp_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP remora_cp_status_writes_total Status subresource writes to Kubernetes objects, by result."
        );
        let _ = writeln!(out, "# TYPE remora_cp_status_writes_total counter");
        let _ = writeln!(
            out,
            "remora_cp_status_writes_total{{result=\"ok\"}} {}",
            get(&self.status_writes)
        );
        let _ = writeln!(
            out,
            "remora_cp_status_writes_total{{result=\"error\"}} {}",
            get(&self.status_write_errors)
        );
        let _ = writeln!(
            out,
            "# HELP remora_cp_injections_total Admission reviews the sidecar injector answered, by result."
        );
        let _ = writeln!(out, "# TYPE remora_cp_injections_total counter");
        for (result, count) in [
            ("injected", &self.injections.injected),
            ("skipped", &self.injections.skipped),
            ("denied", &self.injections.denied),
        ] {
            let _ = writeln!(
                out,
                "remora_cp_injections_total{{result=\"{result}\"}} {}",
                get(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP remora_cp_certificates_total CSRs the CA answered, by result."
        );
        let _ = writeln!(out, "# TYPE remora_cp_certificates_total counter");
        for (result, count) in [
            ("signed", &self.signing.signed),
            ("unauthenticated", &self.signing.unauthenticated),
            ("denied", &self.signing.denied),
            ("invalid", &self.signing.invalid),
        ] {
            let _ = writeln!(
                out,
                "remora_cp_certificates_total{{result=\"{result}\"}} {}",
                get(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP remora_cp_mesh_version The mesh version being served."
        );
        let _ = writeln!(out, "# TYPE remora_cp_mesh_version gauge");
        let _ = writeln!(out, "remora_cp_mesh_version {}", get(&self.mesh_version));
        let _ = writeln!(
            out,
            "# HELP remora_cp_push_latency_seconds From a mesh version's publication to a response carrying it."
        );
        let _ = writeln!(out, "# TYPE remora_cp_push_latency_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += get(&self.latency_buckets[i]);
            let _ = writeln!(
                out,
                "remora_cp_push_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = get(&self.latency_count);
        let _ = writeln!(
            out,
            "remora_cp_push_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "remora_cp_push_latency_seconds_sum {}",
            get(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "remora_cp_push_latency_seconds_count {count}");
        out
    }
}
