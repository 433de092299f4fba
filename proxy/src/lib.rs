//! Remora's data plane: an L4/L7 proxy for HTTP/1.1, HTTP/2 (h2c), gRPC and
//! opaque TCP.
//!
//! A [`Config`](config::Config) (from the YAML file) is validated and compiled
//! into an immutable [`Snapshot`](snapshot::Snapshot); listeners accept
//! connections and serve them from the snapshot current when each request
//! starts. A new config swaps in a new snapshot atomically ([`Proxy::reload`]).
//!
//! Where things live: `config/` (the file's shape), `snapshot/` (compile and
//! validate), `listener/` (sockets, accept, reload of bound addresses),
//! `http/` (serving, routing, forwarding), `route/` (matching, header edits,
//! traffic split), `cluster/` and `balance/` (endpoints and their choice),
//! `pool/` (upstream connections), `tcp/` (opaque relay), `admin/`,
//! `telemetry/` (metrics, logs, access log), `reload/` (file watch, SIGHUP).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod accept;
pub mod admin;
pub mod balance;
mod body;
mod breaker;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod endpoint;
pub mod fault;
pub mod health;
pub mod http;
pub mod listener;
pub mod outlier;
pub mod pool;
mod proxy;
pub(crate) mod rand;
pub mod ratelimit;
pub mod reload;
pub mod retry;
pub mod route;
pub mod snapshot;
mod socket;
mod sync;
pub mod tcp;
pub mod telemetry;
pub mod worker;
pub mod xds;

pub use proxy::{Proxy, ProxyOptions};
