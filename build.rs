//! Compiles `proto/` with the pure-Rust `protox` compiler, so no `protoc` is needed, and keeps
//! the encoded descriptors for gRPC reflection.

fn main() {
    #[cfg(feature = "server")]
    if let Err(e) = compile() {
        panic!("proto compilation failed: {e}");
    }
}

#[cfg(feature = "server")]
fn compile() -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message;
    const PROTO: &str = "proto/livekit_bridge.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("livekit_bridge_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
