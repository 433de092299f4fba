//! Remora's control plane: reads the mesh (a file on one host), translates
//! it into Envoy v3 resources for each proxy and serves them over ADS, both
//! state of the world and delta, to Remora proxies and to Envoy alike.
//!
//! Where things live: `mesh/` (the file's shape, validation, watching),
//! `k8s/` (Kubernetes objects from manifests → the same mesh),
//! `translate/` (mesh → Listener, RouteConfiguration, Cluster,
//! ClusterLoadAssignment), `xds/` (the ADS streams and the registry of
//! connected proxies), `ca/` (the certificate authority and bootstrap
//! tokens), `inject/` (the sidecar injector webhook), `admin/` (`/ready`, `/metrics`, `/debug/proxies`),
//! `server` (starting it all).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod ca;
pub mod inject;
pub mod k8s;
pub mod mesh;
pub mod metrics;
pub mod server;
pub mod translate;
pub mod xds;

pub use server::{ControlPlane, Options, Source};
