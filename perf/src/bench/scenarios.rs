//! The scenarios of shared/PERF.md.

use crate::load::Protocol;

/// What the upstream speaks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    Http1,
    Http2,
    Tcp,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub protocol: Protocol,
    pub connections: usize,
    pub streams: usize,
    /// gRPC message bytes, or TCP bytes per round trip.
    pub size: usize,
    /// HTTP response body bytes.
    pub body_size: usize,
    pub upstream: UpstreamKind,
    /// Retries, outlier detection and a consistent-hash balancer over three
    /// endpoints, in every proxy that has them.
    pub resilience: bool,
    /// Also measure latency in an open loop at the fixed rate.
    pub latency: bool,
}

impl Scenario {
    /// Whether the client talks HTTP/2 to the proxy.
    pub fn downstream_h2(&self) -> bool {
        matches!(
            self.protocol,
            Protocol::H2c | Protocol::Grpc | Protocol::GrpcStream
        )
    }
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "http1",
        about: "HTTP/1.1 keep-alive, 20-byte body, 32 connections",
        protocol: Protocol::Http1,
        connections: 32,
        streams: 1,
        size: 0,
        body_size: 20,
        upstream: UpstreamKind::Http1,
        resilience: false,
        latency: true,
    },
    Scenario {
        name: "http1-1k",
        about: "HTTP/1.1 keep-alive, 1 KiB body, 32 connections",
        protocol: Protocol::Http1,
        connections: 32,
        streams: 1,
        size: 0,
        body_size: 1024,
        upstream: UpstreamKind::Http1,
        resilience: false,
        latency: false,
    },
    Scenario {
        name: "h2c-32x1",
        about: "h2c, 32 connections × 1 stream, 20-byte body, HTTP/2 upstream",
        protocol: Protocol::H2c,
        connections: 32,
        streams: 1,
        size: 0,
        body_size: 20,
        upstream: UpstreamKind::Http2,
        resilience: false,
        latency: true,
    },
    Scenario {
        name: "h2c-4x8",
        about: "h2c, 4 connections × 8 streams, 20-byte body, HTTP/2 upstream",
        protocol: Protocol::H2c,
        connections: 4,
        streams: 8,
        size: 0,
        body_size: 20,
        upstream: UpstreamKind::Http2,
        resilience: false,
        latency: false,
    },
    Scenario {
        name: "grpc-unary",
        about: "gRPC unary, 20-byte messages, 4 connections × 8 streams",
        protocol: Protocol::Grpc,
        connections: 4,
        streams: 8,
        size: 20,
        body_size: 20,
        upstream: UpstreamKind::Http2,
        resilience: false,
        latency: true,
    },
    Scenario {
        name: "grpc-stream",
        about: "gRPC bidirectional streams, 20-byte messages echoed, 4 connections × 8 streams",
        protocol: Protocol::GrpcStream,
        connections: 4,
        streams: 8,
        size: 20,
        body_size: 20,
        upstream: UpstreamKind::Http2,
        resilience: false,
        latency: false,
    },
    Scenario {
        name: "tcp",
        about: "opaque TCP, 16 KiB round trips through an echo server, 4 connections",
        protocol: Protocol::Tcp,
        connections: 4,
        streams: 1,
        size: 16 * 1024,
        body_size: 20,
        upstream: UpstreamKind::Tcp,
        resilience: false,
        latency: false,
    },
    Scenario {
        name: "http1-resilience",
        about: "HTTP/1.1 as `http1`, through retries + outlier detection + ring hash over 3 endpoints",
        protocol: Protocol::Http1,
        connections: 32,
        streams: 1,
        size: 0,
        body_size: 20,
        upstream: UpstreamKind::Http1,
        resilience: true,
        latency: true,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
