//! The control channel between the front and its room workers, as either side reads it: any
//! bytes are split into frames and decoded, as the front reads a worker and a worker reads the
//! front, without a panic; what decodes converts into the room layer's errors and disconnects,
//! and a frame encoded again decodes to the same message. (A worker that sends what does not
//! decode is taken for dead; this is the decoder that decides it.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use livekit_bridge::room::worker::wire::{self, proto};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(messages) = wire::decode_all::<proto::FromWorker>(data) {
        for m in messages {
            match m.op.clone() {
                Some(proto::from_worker::Op::Failed(f))
                | Some(proto::from_worker::Op::TrackFailed(proto::TrackFailed {
                    failed: Some(f),
                    ..
                })) => drop(wire::room_error(f)),
                Some(proto::from_worker::Op::Event(proto::RoomEvent {
                    event: Some(proto::room_event::Event::Disconnected(d)),
                    ..
                })) => drop(wire::disconnect(d)),
                _ => {}
            }
            let again = wire::encode(&m);
            let back = proto::FromWorker::decode(&again[4..]).expect("our own encoding decodes");
            assert_eq!(back, m);
        }
    }
    if let Ok(messages) = wire::decode_all::<proto::ToWorker>(data) {
        for m in messages {
            if let Some(proto::to_worker::Op::Join(j)) = &m.op {
                drop(wire::from_audio_source(j.audio_source()));
            }
        }
    }
});
