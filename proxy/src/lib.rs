//! Remora's data plane: an L4/L7 proxy for HTTP/1.1, HTTP/2 (h2c), gRPC and
//! opaque TCP.
//!
//! A [`Config`](config::Config) (from the YAML file) is validated and compiled
//! into an immutable [`Snapshot`](snapshot::Snapshot); listeners accept
//! connections and serve them from the snapshot current when each request
//! starts. A new config swaps in a new snapshot atomically ([`Proxy::reload`]).
//!
//! The modules form layers, each using only those below it (checked by
//! `tests/layering.rs`; the map is in docs/architecture.md). The crate is
//! private by default: what is `pub` is what the `remora-proxy` binary, the
//! benches, the examples and the integration tests use.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(unreachable_pub)]

mod accept;
mod adaptive;
pub mod admin;
mod authz;
pub use remora_api::check_authorization;
mod balance;
mod body;
mod breaker;
mod cache;
pub mod capture;
pub mod cluster;
pub mod config;
mod discovery;
mod endpoint;
mod fault;
#[doc(hidden)]
pub mod fuzz;
mod health;
pub mod http;
pub mod identity;
pub mod listener;
mod outlier;
mod pool;
mod proxy;
mod rand;
mod ratelimit;
pub mod reload;
mod retry;
pub mod route;
pub mod snapshot;
mod sniff;
mod socket;
mod sync;
mod tcp;
pub mod telemetry;
pub mod tls;
mod trace;
pub mod worker;
pub mod xds;

pub use proxy::{Proxy, ProxyOptions};
