//! Compiles Remora's own protos with protox (pure Rust, no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/remora/ca/v1/ca.proto",
        // OTLP/trace, as published by OpenTelemetry (Apache-2.0), for the
        // proxy's span exporter and the tests' receiver.
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
