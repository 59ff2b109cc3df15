pub mod proto { tonic::include_proto!("mentra.livekit.bridge"); }
