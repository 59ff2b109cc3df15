//! A tonic channel over a Unix socket, as the backend reaches a bridge on `LIVEKIT_GRPC_SOCKET`
//! (the library's own, which `livekit-bridge ctl` uses).

use std::path::Path;

use tonic::transport::Channel;

pub async fn unix_channel(socket: &Path) -> Channel {
    livekit_bridge::ctl::unix_channel(socket)
        .await
        .expect("connect over the Unix socket")
}
