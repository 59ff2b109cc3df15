//! A tonic channel over a Unix socket, as the backend reaches a bridge on `LIVEKIT_GRPC_SOCKET`.

use std::path::Path;

use tonic::transport::{Channel, Endpoint};

pub async fn unix_channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://bridge")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect over the Unix socket")
}
