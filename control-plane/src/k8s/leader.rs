//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews the lease every `retry`; a
//! replica takes it over once it has not been renewed for its duration,
//! with the lease's resource version guarding the write, so two replicas
//! never both win. Every replica serves xDS; only the leader writes status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Which lease, held by whom, for how long.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// A lease not renewed for this long may be taken over.
    pub duration: Duration,
    /// How often the holder renews, and others look.
    pub retry: Duration,
}

impl LeaseConfig {
    /// From the Downward API (`POD_NAMESPACE`, `POD_NAME`), as the chart
    /// sets them; else `remora-system` and the host name.
    pub fn from_env() -> LeaseConfig {
        let identity = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("remora-control-plane-{}", std::process::id()));
        LeaseConfig {
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "remora-system".into()),
            name: "remora-control-plane".into(),
            identity,
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// Runs the election until the task is aborted; `leader` says whether this
/// replica holds the lease now.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let held = match try_acquire_or_renew(&api, &config).await {
            Ok(held) => {
                if held {
                    last_renewed = Some(tokio::time::Instant::now());
                }
                held
            }
            Err(error) => {
                tracing::warn!(lease = %config.name, %error, "lease update failed");
                // A holder that cannot renew steps down before the lease
                // runs out, so another can take over cleanly.
                *leader.borrow()
                    && last_renewed.is_some_and(|at| at.elapsed() < config.duration * 2 / 3)
            }
        };
        if leader.send_replace(held) != held {
            if held {
                tracing::info!(identity = %config.identity, lease = %config.name, "leading: writing status");
            } else {
                tracing::info!(identity = %config.identity, lease = %config.name, "not leading");
            }
        }
        metrics.leader.store(held, Ordering::Relaxed);
        tokio::time::sleep(config.retry).await;
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Takes the lease if it is free or expired, renews it if ours; whether we
/// hold it afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !ours {
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0),
        );
        let expired = match &spec.renew_time {
            Some(MicroTime(renewed)) => {
                let age = Timestamp::now().duration_since(*renewed);
                age.as_secs_f64() > duration.as_secs_f64()
            }
            None => true,
        };
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !free && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds);
    // The resource version from the read makes this a compare-and-swap.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}
