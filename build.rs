//! Compiles `proto/` with the pure-Rust `protox` compiler, so no `protoc` is needed, and keeps
//! the encoded descriptors for gRPC reflection. Also compiles the subset of LiveKit's FFI protocol
//! (`proto/livekit_ffi/`) that the `ffi` room backend speaks, and the control channel to the
//! room workers (`proto/room_worker.proto`).

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

    // The front's control channel to its room workers: messages only.
    const WORKER: &str = "proto/room_worker.proto";
    println!("cargo:rerun-if-changed={WORKER}");
    let worker = protox::compile([WORKER], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(worker)?;

    // LiveKit's FFI protocol: messages only, no services.
    const FFI: &[&str] = &[
        "proto/livekit_ffi/handle.proto",
        "proto/livekit_ffi/participant.proto",
        "proto/livekit_ffi/stats.proto",
        "proto/livekit_ffi/track.proto",
        "proto/livekit_ffi/audio_frame.proto",
        "proto/livekit_ffi/room.proto",
        "proto/livekit_ffi/ffi.proto",
    ];
    for f in FFI {
        println!("cargo:rerun-if-changed={f}");
    }
    let ffi = protox::compile(FFI, ["proto/livekit_ffi"])?;
    std::fs::write(out.join("livekit_ffi_descriptor.bin"), ffi.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(ffi)?;
    Ok(())
}
