//! The hot path's first step on a real room: reading a data packet event from LiveKit's
//! library. The zero-copy reader the bridge uses (`room::ffi::packet::read_data_packet`)
//! against decoding the whole `FfiEvent` with prost, on the event a 10 ms audio packet from the
//! phone produces (identity, no topic, an owned buffer of 321 bytes). And the track path's
//! counterpart, `read_audio_frame`, on the event a 10 ms frame of a subscribed track produces,
//! with the data packet reader's refusal of that event (which comes first on the callback
//! thread for every track frame).
//!
//! Run: `cargo bench --bench ffi_event`.

use criterion::{Criterion, criterion_group, criterion_main};
use livekit_bridge::room::ffi::packet::{
    AudioFrameRef, DataPacketRef, read_audio_frame, read_data_packet,
};
use livekit_bridge::room::ffi::proto::{self, ffi_event};
use prost::Message;

fn event() -> Vec<u8> {
    DataPacketRef {
        room_handle: 17,
        kind: 0,
        identity: "user-7f3a9c21",
        topic: "",
        buffer_handle: 123_456,
        data_ptr: 0x7f12_3456_7890,
        data_len: 321,
    }
    .to_event()
    .encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let bytes = event();
    let mut group = c.benchmark_group("data_packet_event");
    group.bench_function("zero_copy_reader", |b| {
        b.iter(|| {
            let p = read_data_packet(std::hint::black_box(&bytes)).expect("packet");
            (p.room_handle, p.identity.len(), p.data_len)
        });
    });
    group.bench_function("prost_decode", |b| {
        b.iter(|| {
            let e = proto::FfiEvent::decode(std::hint::black_box(bytes.as_slice())).expect("event");
            matches!(e.message, Some(ffi_event::Message::RoomEvent(_)))
        });
    });
    group.finish();

    let frame = AudioFrameRef {
        stream_handle: 4_242,
        buffer_handle: 987_654,
        data_ptr: 0x7f12_3456_7890,
        num_channels: 1,
        sample_rate: 16_000,
        samples_per_channel: 160,
    }
    .to_event()
    .encode_to_vec();
    let mut group = c.benchmark_group("audio_frame_event");
    group.bench_function("packet_reader_refuses", |b| {
        b.iter(|| read_data_packet(std::hint::black_box(&frame)).is_none());
    });
    group.bench_function("frame_reader", |b| {
        b.iter(|| {
            let f = read_audio_frame(std::hint::black_box(&frame)).expect("frame");
            (f.stream_handle, f.samples_per_channel)
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
