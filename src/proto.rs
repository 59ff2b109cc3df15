//! The wire contract, generated from `proto/livekit_bridge.proto` at build time.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("mentra.livekit.bridge");

/// The contract's descriptors, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("livekit_bridge_descriptor");

/// The fully qualified service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "mentra.livekit.bridge.LiveKitBridge";
