//! The hot path's view of an event: a zero-copy read of `FfiEvent.room_event.
//! data_packet_received.user`, the only event that arrives a hundred times a second per user
//! on the data path, and ([`read_audio_frame`]) of `FfiEvent.audio_stream_event.
//! frame_received`, its counterpart on the track path.
//!
//! Decoding the whole `FfiEvent` with prost would allocate (strings, boxed messages) on the
//! library's callback thread for every audio frame. This reader walks the protobuf wire format
//! of just the fields the hot path needs, borrowing the identity and topic from the event's own
//! bytes, and allocates nothing. It follows prost's reading of the same bytes (as generated
//! from `proto/livekit_ffi/`): the last value of a repeated scalar wins, repeated sub-messages
//! merge, a later member of a oneof replaces an earlier one. Whenever prost would decode a user
//! data packet, this returns the same fields; `fuzz/fuzz_targets/ffi_event.rs` checks that.

use super::proto;

/// A user data packet in a room event, borrowing from the event's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPacketRef<'a> {
    pub room_handle: u64,
    /// `DataPacketKind`: 0 lossy, 1 reliable.
    pub kind: i32,
    pub identity: &'a str,
    pub topic: &'a str,
    /// The `OwnedBuffer`'s handle, to drop once the payload has been copied.
    pub buffer_handle: u64,
    pub data_ptr: u64,
    pub data_len: u64,
}

impl DataPacketRef<'_> {
    /// The event the library sends for this packet (an empty topic is an absent one): what
    /// tests, benchmarks and fuzz seeds feed the reader.
    pub fn to_event(&self) -> proto::FfiEvent {
        use proto::{data_packet_received, ffi_event, room_event};
        let user = proto::UserPacket {
            data: proto::OwnedBuffer {
                handle: proto::FfiOwnedHandle {
                    id: self.buffer_handle,
                },
                data: proto::BufferInfo {
                    data_ptr: self.data_ptr,
                    data_len: self.data_len,
                },
            },
            topic: (!self.topic.is_empty()).then(|| self.topic.to_string()),
        };
        let packet = proto::DataPacketReceived {
            kind: self.kind,
            participant_identity: self.identity.to_string(),
            value: Some(data_packet_received::Value::User(user)),
        };
        proto::FfiEvent {
            message: Some(ffi_event::Message::RoomEvent(proto::RoomEvent {
                room_handle: self.room_handle,
                message: Some(room_event::Message::DataPacketReceived(packet)),
            })),
        }
    }
}

/// A frame of a remote audio stream: where the library holds its samples until the buffer's
/// handle is dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AudioFrameRef {
    pub stream_handle: u64,
    /// The `OwnedAudioFrameBuffer`'s handle, to drop once the samples have been copied.
    pub buffer_handle: u64,
    /// Interleaved 16-bit samples, `num_channels * samples_per_channel` of them.
    pub data_ptr: u64,
    pub num_channels: u32,
    pub sample_rate: u32,
    pub samples_per_channel: u32,
}

impl AudioFrameRef {
    /// The event the library sends for this frame.
    pub fn to_event(&self) -> proto::FfiEvent {
        use proto::{audio_stream_event, ffi_event};
        let frame = proto::AudioFrameReceived {
            frame: proto::OwnedAudioFrameBuffer {
                handle: proto::FfiOwnedHandle {
                    id: self.buffer_handle,
                },
                info: proto::AudioFrameBufferInfo {
                    data_ptr: self.data_ptr,
                    num_channels: self.num_channels,
                    sample_rate: self.sample_rate,
                    samples_per_channel: self.samples_per_channel,
                },
            },
        };
        proto::FfiEvent {
            message: Some(ffi_event::Message::AudioStreamEvent(
                proto::AudioStreamEvent {
                    stream_handle: self.stream_handle,
                    message: Some(audio_stream_event::Message::FrameReceived(frame)),
                },
            )),
        }
    }

    /// The frame's length in bytes, if it is within `max` bytes.
    pub fn byte_len(&self, max: usize) -> Option<usize> {
        let samples = u64::from(self.num_channels) * u64::from(self.samples_per_channel);
        usize::try_from(samples.checked_mul(2)?)
            .ok()
            .filter(|n| *n <= max)
    }
}

/// The audio frame in the encoded `event`, if it is one. An audio stream event holds numbers
/// only, so prost's decoding of it allocates nothing (`tests/alloc_free_push.rs` checks).
pub fn read_audio_frame(event: &[u8]) -> Option<AudioFrameRef> {
    use prost::Message;
    audio_frame_of(&proto::FfiEvent::decode(event).ok()?)
}

/// The audio frame in a decoded `event`, if it is one: what the event callback, which decodes
/// every event that is not a data packet once, asks of it.
pub fn audio_frame_of(event: &proto::FfiEvent) -> Option<AudioFrameRef> {
    use proto::{audio_stream_event, ffi_event};
    let Some(ffi_event::Message::AudioStreamEvent(e)) = &event.message else {
        return None;
    };
    let Some(audio_stream_event::Message::FrameReceived(f)) = &e.message else {
        return None;
    };
    Some(AudioFrameRef {
        stream_handle: e.stream_handle,
        buffer_handle: f.frame.handle.id,
        data_ptr: f.frame.info.data_ptr,
        num_channels: f.frame.info.num_channels,
        sample_rate: f.frame.info.sample_rate,
        samples_per_channel: f.frame.info.samples_per_channel,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Option<u64> {
        // One byte is the common case (tags, small numbers).
        if let Some(&b) = self.buf.get(self.pos)
            && b & 0x80 == 0
        {
            self.pos += 1;
            return Some(u64::from(b));
        }
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    /// Skips a (deprecated, but legal) group up to its end-group tag, as prost does.
    fn skip_group(&mut self, number: u32, depth: u32) -> Option<()> {
        if depth > 100 {
            return None;
        }
        loop {
            let key = self.varint()?;
            let inner = u32::try_from(key >> 3).ok()?;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let len = usize::try_from(self.varint()?).ok()?;
                    self.take(len)?;
                }
                3 => self.skip_group(inner, depth + 1)?,
                4 if inner == number => return Some(()),
                5 => {
                    self.take(4)?;
                }
                _ => return None,
            }
        }
    }

    /// The next field: number and value. `None` at the end or on malformed input.
    #[inline]
    fn field(&mut self) -> Option<Option<(u32, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Some(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok()?;
        if number == 0 {
            return None;
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Other
            }
            3 => {
                self.skip_group(number, 0)?;
                Value::Other
            }
            // An end-group with no start, or an unknown wire type.
            _ => return None,
        };
        Some(Some((number, value)))
    }
}

/// Oneof members of the generated types, by field number.
fn ffi_event_member(n: u32) -> bool {
    matches!(n, 1 | 4 | 5 | 7 | 8 | 9 | 10 | 13 | 17 | 18 | 20)
}

fn room_event_member(n: u32) -> bool {
    matches!(n, 2..=5 | 7..=13 | 21 | 22 | 27 | 41)
}

/// What has been read so far, with the oneof bookkeeping prost's merge rules need: a member
/// that reappears merges into what is there; a different member replaces it.
#[derive(Default)]
struct State<'a> {
    out: DataPacketRef<'a>,
    event_member: u32,
    room_member: u32,
    user_seen: bool,
}

impl<'a> State<'a> {
    fn reset_packet(&mut self) {
        let room_handle = self.out.room_handle;
        self.out = DataPacketRef {
            room_handle,
            ..Default::default()
        };
        self.user_seen = false;
    }
}

/// Reads a user data packet out of an encoded `FfiEvent`, or `None` if the event is anything
/// else (or malformed).
pub fn read_data_packet(event: &[u8]) -> Option<DataPacketRef<'_>> {
    let mut st = State::default();
    let mut r = Reader::new(event);
    while let Some((number, value)) = r.field()? {
        if ffi_event_member(number) && number != st.event_member {
            // A different member: what was read of the room event is gone.
            st = State {
                event_member: number,
                ..Default::default()
            };
        }
        if let (1, Value::Bytes(room_event)) = (number, value) {
            room(room_event, &mut st)?;
        }
    }
    (st.event_member == 1 && st.room_member == 27 && st.user_seen).then_some(st.out)
}

fn room<'a>(bytes: &'a [u8], st: &mut State<'a>) -> Option<()> {
    let mut r = Reader::new(bytes);
    while let Some((number, value)) = r.field()? {
        if room_event_member(number) && number != st.room_member {
            st.room_member = number;
            st.reset_packet();
        }
        match (number, value) {
            (1, Value::Varint(v)) => st.out.room_handle = v,
            (27, Value::Bytes(b)) => packet(b, st)?,
            _ => {}
        }
    }
    Some(())
}

fn packet<'a>(bytes: &'a [u8], st: &mut State<'a>) -> Option<()> {
    let mut r = Reader::new(bytes);
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Value::Varint(v)) => st.out.kind = v as i32,
            (2, Value::Bytes(b)) => st.out.identity = std::str::from_utf8(b).ok()?,
            (4, Value::Bytes(b)) => {
                st.user_seen = true;
                user(b, &mut st.out)?;
            }
            _ => {}
        }
    }
    Some(())
}

fn user<'a>(bytes: &'a [u8], out: &mut DataPacketRef<'a>) -> Option<()> {
    let mut r = Reader::new(bytes);
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Value::Bytes(b)) => owned_buffer(b, out)?,
            (2, Value::Bytes(b)) => out.topic = std::str::from_utf8(b).ok()?,
            _ => {}
        }
    }
    Some(())
}

fn owned_buffer(bytes: &[u8], out: &mut DataPacketRef<'_>) -> Option<()> {
    let mut r = Reader::new(bytes);
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Value::Bytes(handle)) => {
                let mut h = Reader::new(handle);
                while let Some((n, v)) = h.field()? {
                    if let (1, Value::Varint(id)) = (n, v) {
                        out.buffer_handle = id;
                    }
                }
            }
            (2, Value::Bytes(info)) => {
                let mut i = Reader::new(info);
                while let Some((n, v)) = i.field()? {
                    match (n, v) {
                        (1, Value::Varint(p)) => out.data_ptr = p,
                        (2, Value::Varint(l)) => out.data_len = l,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::room::ffi::proto::{ffi_event, room_event};

    const PACKET: DataPacketRef<'static> = DataPacketRef {
        room_handle: 42,
        kind: 0,
        identity: "user-1",
        topic: "",
        buffer_handle: 7,
        data_ptr: 0xdead_beef,
        data_len: 321,
    };

    #[test]
    fn reads_what_prost_wrote() {
        let bytes = PACKET.to_event().encode_to_vec();
        assert_eq!(read_data_packet(&bytes), Some(PACKET));
        let reliable = DataPacketRef {
            kind: 1,
            topic: "chat",
            ..PACKET
        };
        let bytes = reliable.to_event().encode_to_vec();
        assert_eq!(read_data_packet(&bytes), Some(reliable));
    }

    #[test]
    fn other_events_are_not_data_packets() {
        let disconnected = proto::FfiEvent {
            message: Some(ffi_event::Message::RoomEvent(proto::RoomEvent {
                room_handle: 1,
                message: Some(room_event::Message::Disconnected(proto::Disconnected {
                    reason: 5,
                })),
            })),
        };
        assert_eq!(read_data_packet(&disconnected.encode_to_vec()), None);
        let panic = proto::FfiEvent {
            message: Some(ffi_event::Message::Panic(proto::Panic {
                message: "x".into(),
            })),
        };
        assert_eq!(read_data_packet(&panic.encode_to_vec()), None);
        assert_eq!(read_data_packet(&[]), None);
        assert_eq!(read_data_packet(&[0x0a, 0x05, 0x08]), None, "truncated");
    }

    /// The reader's oneof member lists are the generated types' own: a member added to the
    /// protocol subset and not to the lists would make the reader disagree with prost.
    #[test]
    fn the_oneof_member_lists_match_the_protocol_subset() {
        let fds = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the subset's descriptors");
        let members = |name: &str| -> Vec<u32> {
            let message = fds
                .file
                .iter()
                .flat_map(|f| &f.message_type)
                .find(|m| m.name() == name)
                .expect("message in the subset");
            let mut n: Vec<u32> = message
                .field
                .iter()
                .filter(|f| f.oneof_index.is_some())
                .map(|f| f.number() as u32)
                .collect();
            n.sort_unstable();
            n
        };
        let listed = |f: fn(u32) -> bool| (1..1000).filter(|n| f(*n)).collect::<Vec<u32>>();
        assert_eq!(listed(ffi_event_member), members("FfiEvent"));
        assert_eq!(listed(room_event_member), members("RoomEvent"));
    }

    #[test]
    fn audio_frame_events_are_read_and_others_are_not() {
        let frame = AudioFrameRef {
            stream_handle: 4,
            buffer_handle: 5,
            data_ptr: 0x10,
            num_channels: 1,
            sample_rate: 16_000,
            samples_per_channel: 160,
        };
        let bytes = frame.to_event().encode_to_vec();
        assert_eq!(read_audio_frame(&bytes), Some(frame));
        assert_eq!(frame.byte_len(320), Some(320));
        assert_eq!(frame.byte_len(319), None);
        let huge = AudioFrameRef {
            num_channels: u32::MAX,
            samples_per_channel: u32::MAX,
            ..frame
        };
        assert_eq!(
            huge.byte_len(usize::MAX),
            None,
            "the sample count overflows"
        );
        assert_eq!(read_audio_frame(&PACKET.to_event().encode_to_vec()), None);
        let eos = proto::FfiEvent {
            message: Some(ffi_event::Message::AudioStreamEvent(
                proto::AudioStreamEvent {
                    stream_handle: 4,
                    message: Some(proto::audio_stream_event::Message::Eos(
                        proto::AudioStreamEos {},
                    )),
                },
            )),
        };
        assert_eq!(read_audio_frame(&eos.encode_to_vec()), None);
        assert_eq!(read_audio_frame(&[0x22, 0x05]), None, "truncated");
    }

    #[test]
    fn a_later_oneof_member_replaces_the_packet_as_prost_does() {
        let mut bytes = PACKET.to_event().encode_to_vec();
        let panic = proto::FfiEvent {
            message: Some(ffi_event::Message::Panic(proto::Panic {
                message: "x".into(),
            })),
        };
        bytes.extend(panic.encode_to_vec());
        assert_eq!(read_data_packet(&bytes), None);
        let decoded = proto::FfiEvent::decode(bytes.as_slice()).expect("valid");
        assert!(matches!(
            decoded.message,
            Some(ffi_event::Message::Panic(_))
        ));
    }
}
