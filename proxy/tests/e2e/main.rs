//! End-to-end tests: the proxy between real clients and real servers on
//! loopback. Each file is one behaviour area; see `support/` for the harness.

mod admin_api;
mod bad_input;
mod balancing;
mod cache;
mod capture;
mod config_cli;
mod fuzz;
mod global_limits;
mod grpc_calls;
mod health_checks;
mod hostile_corpus;
mod hostile_http1;
mod hostile_http2;
mod idle_memory;
mod netns;
mod overload;
mod pools;
mod protection;
mod proxying;
mod reload;
mod retries;
mod routing;
mod shutdown;
mod support;
mod tcp_relay;
mod tls;
mod tracing;
mod websocket;
