//! Compiles `proto/` with `protox`, a pure-Rust protobuf compiler, so a fresh machine
//! builds without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/stella/agent/v1/agent.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `AgentGatewayClient::connect(dst)` constructor would clash with the
        // `Connect` RPC; agents build their channel themselves (custom TLS connector).
        .build_transport(false)
        // Small initial message buffers: a server holds two per agent session.
        .codec_path("crate::SmallBufferCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
