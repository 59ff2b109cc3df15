//! The hot path's zero-copy reader of data packet events against prost's decoding of the same
//! bytes: whenever prost decodes an `FfiEvent`, the reader must find exactly the user data
//! packet prost finds (same room, kind, identity, topic, buffer handle, pointer and length), or
//! none when prost finds none. (Bytes prost rejects never come from the library; the reader
//! may read or refuse them, but must not panic.) The track path's reader of audio frame events
//! must find exactly the frame prost finds, and the frame's length must be computed without
//! overflow whatever the numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livekit_bridge::room::ffi::packet::{DataPacketRef, read_audio_frame, read_data_packet};
use livekit_bridge::room::ffi::proto::{
    self, audio_stream_event, data_packet_received, ffi_event, room_event,
};
use prost::Message;

fn expected(event: &proto::FfiEvent) -> Option<DataPacketRef<'_>> {
    let Some(ffi_event::Message::RoomEvent(room)) = &event.message else {
        return None;
    };
    let Some(room_event::Message::DataPacketReceived(packet)) = &room.message else {
        return None;
    };
    let Some(data_packet_received::Value::User(user)) = &packet.value else {
        return None;
    };
    Some(DataPacketRef {
        room_handle: room.room_handle,
        kind: packet.kind,
        identity: &packet.participant_identity,
        topic: user.topic.as_deref().unwrap_or(""),
        buffer_handle: user.data.handle.id,
        data_ptr: user.data.data.data_ptr,
        data_len: user.data.data.data_len,
    })
}

fuzz_target!(|data: &[u8]| {
    let ours = read_data_packet(data);
    let frame = read_audio_frame(data);
    if let Some(f) = &frame {
        if let Some(len) = f.byte_len(usize::MAX) {
            assert_eq!(
                len as u64,
                2 * u64::from(f.num_channels) * u64::from(f.samples_per_channel)
            );
        }
    }
    if let Ok(event) = proto::FfiEvent::decode(data) {
        assert_eq!(ours, expected(&event), "reader and prost disagree");
        let is_frame = matches!(
            &event.message,
            Some(ffi_event::Message::AudioStreamEvent(e))
                if matches!(e.message, Some(audio_stream_event::Message::FrameReceived(_)))
        );
        assert_eq!(
            frame.is_some(),
            is_frame,
            "the frame reader and prost disagree"
        );
    } else {
        assert!(frame.is_none(), "a frame read from bytes prost rejects");
    }
});
