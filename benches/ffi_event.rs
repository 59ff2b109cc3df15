//! The hot path's first step on a real room: reading a data packet event from LiveKit's
//! library. The zero-copy reader the bridge uses (`room::ffi::packet::read_data_packet`)
//! against decoding the whole `FfiEvent` with prost, on the event a 10 ms audio packet from the
//! phone produces (identity, no topic, an owned buffer of 321 bytes).
//!
//! Run: `cargo bench --bench ffi_event`.

use criterion::{Criterion, criterion_group, criterion_main};
use livekit_bridge::room::ffi::packet::{DataPacketRef, read_data_packet};
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
