//! Compiles `proto/` with the pure-Rust `protox` compiler, so no `protoc` is needed.

fn main() {
    #[cfg(feature = "server")]
    if let Err(e) = compile() {
        panic!("proto compilation failed: {e}");
    }
}

#[cfg(feature = "server")]
fn compile() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/livekit_bridge.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("livekit_bridge_descriptor.bin"))
        .compile_fds(fds)?;
    Ok(())
}
