//! The control channel's framing and the conversions between its messages
//! (`proto/room_worker.proto`) and the room layer's types.
//!
//! A frame is a little-endian `u32` length and that many bytes of one protobuf message. A length
//! over [`MAX_MESSAGE`], a message that does not decode, or an end of file inside a frame is a
//! [`WireError`]: the front treats the worker that sent it as dead.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::room::{AudioSource, Disconnect, DisconnectCause, RoomError};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    //! The control channel's messages, generated at build time.
    include!(concat!(
        env!("OUT_DIR"),
        "/livekit_bridge.room_worker.v1.rs"
    ));
}

use proto::{disconnected, failed};

/// The protocol's version, checked in the handshake: front and worker are the same binary, so
/// a mismatch means a binary replaced under a running front.
pub const VERSION: u32 = 3;
/// The largest frame either side accepts (a Join with its token is the largest message).
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the control socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a control message of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("a control message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// `message` as one frame.
pub fn encode(message: &impl Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    message
        .encode(&mut out)
        .expect("a Vec grows to take any message");
    out
}

/// Reads one frame; `None` at a clean end of file between frames.
pub async fn read<M: Message + Default>(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Result<Option<M>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLong(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(Some(M::decode(buf.as_slice())?))
}

/// Every frame in `bytes`, decoded, as the front reads a worker's stream (the fuzz target's
/// entry point): stops at the first error.
pub fn decode_all<M: Message + Default>(mut bytes: &[u8]) -> Result<Vec<M>, WireError> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let (len, rest) = bytes.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_MESSAGE {
            return Err(WireError::TooLong(len));
        }
        let Some((frame, rest)) = rest.split_at_checked(len) else {
            break;
        };
        out.push(M::decode(frame)?);
        bytes = rest;
    }
    Ok(out)
}

pub fn audio_source(s: AudioSource) -> proto::AudioSource {
    match s {
        AudioSource::Both => proto::AudioSource::Both,
        AudioSource::Data => proto::AudioSource::Data,
        AudioSource::Track => proto::AudioSource::Track,
    }
}

pub fn from_audio_source(s: proto::AudioSource) -> AudioSource {
    match s {
        proto::AudioSource::Both => AudioSource::Both,
        proto::AudioSource::Data => AudioSource::Data,
        proto::AudioSource::Track => AudioSource::Track,
    }
}

pub fn failed(e: &RoomError) -> proto::Failed {
    let (kind, message) = match e {
        RoomError::ConnectFailed(m) => (failed::Kind::ConnectFailed, m.clone()),
        RoomError::InvalidUrl(m) => (failed::Kind::InvalidUrl, m.clone()),
        RoomError::Timeout(d) => (failed::Kind::Timeout, d.as_millis().to_string()),
        RoomError::NotConnected(m) => (failed::Kind::NotConnected, m.clone()),
        RoomError::Unavailable(m) => (failed::Kind::Unavailable, m.clone()),
        RoomError::Library(m) => (failed::Kind::Library, m.clone()),
    };
    proto::Failed {
        kind: kind.into(),
        message,
    }
}

pub fn room_error(f: proto::Failed) -> RoomError {
    match f.kind() {
        failed::Kind::ConnectFailed => RoomError::ConnectFailed(f.message),
        failed::Kind::InvalidUrl => RoomError::InvalidUrl(f.message),
        failed::Kind::Timeout => RoomError::Timeout(std::time::Duration::from_millis(
            f.message.parse().unwrap_or(0),
        )),
        failed::Kind::NotConnected => RoomError::NotConnected(f.message),
        failed::Kind::Unavailable => RoomError::Unavailable(f.message),
        failed::Kind::Library => RoomError::Library(f.message),
    }
}

pub fn disconnected(d: Disconnect) -> proto::Disconnected {
    let cause = match d.cause {
        DisconnectCause::Lost => disconnected::Cause::Lost,
        DisconnectCause::DuplicateIdentity => disconnected::Cause::DuplicateIdentity,
        DisconnectCause::Removed => disconnected::Cause::Removed,
        DisconnectCause::RoomDeleted => disconnected::Cause::RoomDeleted,
    };
    proto::Disconnected {
        cause: cause.into(),
        reason: d.reason,
    }
}

pub fn disconnect(d: proto::Disconnected) -> Disconnect {
    let cause = match d.cause() {
        disconnected::Cause::Lost => DisconnectCause::Lost,
        disconnected::Cause::DuplicateIdentity => DisconnectCause::DuplicateIdentity,
        disconnected::Cause::Removed => DisconnectCause::Removed,
        disconnected::Cause::RoomDeleted => DisconnectCause::RoomDeleted,
    };
    Disconnect {
        cause,
        reason: d.reason,
    }
}

#[cfg(test)]
mod tests {
    use super::proto::{FromWorker, Released, from_worker};
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_errors() {
        let m = FromWorker {
            id: 7,
            op: Some(from_worker::Op::Released(Released { slot: 3 })),
        };
        let mut bytes = encode(&m);
        bytes.extend(encode(&m));
        assert_eq!(
            decode_all::<FromWorker>(&bytes).unwrap(),
            [m.clone(), m.clone()]
        );
        let mut buf = Vec::new();
        let mut r = bytes.as_slice();
        assert_eq!(read::<FromWorker>(&mut r, &mut buf).await.unwrap(), Some(m));
        let mut long = ((MAX_MESSAGE + 1) as u32).to_le_bytes().to_vec();
        long.extend([0; 8]);
        assert!(matches!(
            read::<FromWorker>(&mut long.as_slice(), &mut buf).await,
            Err(WireError::TooLong(_))
        ));
        let junk = [3, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(decode_all::<FromWorker>(&junk).is_err());
        assert!(
            read::<FromWorker>(&mut [].as_slice(), &mut buf)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn errors_and_disconnects_keep_their_kind() {
        for e in [
            RoomError::ConnectFailed("a".into()),
            RoomError::InvalidUrl("b".into()),
            RoomError::Timeout(std::time::Duration::from_millis(1500)),
            RoomError::NotConnected("c".into()),
            RoomError::Unavailable("d".into()),
            RoomError::Library("e".into()),
        ] {
            assert_eq!(room_error(failed(&e)), e);
        }
        for cause in [
            DisconnectCause::Lost,
            DisconnectCause::DuplicateIdentity,
            DisconnectCause::Removed,
            DisconnectCause::RoomDeleted,
        ] {
            let d = Disconnect {
                cause,
                reason: "why".into(),
            };
            assert_eq!(disconnect(disconnected(d.clone())), d);
        }
    }
}
