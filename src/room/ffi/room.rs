//! A joined LiveKit room: its published tracks (created on first use, paced by a
//! [`Feeder`] each, in the library's direct source mode) and leaving it.
//!
//! ## No audio lost at the start of a track
//! The sender of a new track listens only once the publisher's WebRTC negotiation (offer,
//! answer, ICE, DTLS) has completed, and `PublishTrack` answers before that (it waits for the
//! server's track info only). Audio captured in between, about 200 ms against a local SFU and
//! more over a real network, was never heard: the first word of every track was clipped. So
//! a new track's feeder sends silence until its sender has sent RTP (its outbound-rtp
//! `packets_sent`, polled every [`SENDING_POLL`]), and only then takes the caller's audio.
//! Meanwhile the caller's audio waits where it is: a StreamAudio's chunks in HTTP/2 flow
//! control, a playback's frames in its decoder queue. Nothing is dropped; the track starts late
//! by the negotiation time, logged as `waited_ms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::client::{CALL_TIMEOUT, Client, unexpected};
use super::feeder::Feeder;
use super::proto::{self, ffi_event, ffi_request, ffi_response};
use super::reframe::Reframer;
use super::routes::Unpublished;
use crate::audio::format;
use crate::room::{BoxFuture, Room, RoomError};

/// The library's direct source mode: no queue and no thread of its own; the feeder paces.
const SOURCE_QUEUE_MS: u32 = 0;
/// How long leaving a room may take before its handles are released anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a new track's sender is asked whether it has sent RTP yet.
const SENDING_POLL: Duration = Duration::from_millis(10);
/// How long a new track may take to start sending before the caller's audio is captured
/// anyway (and may be lost at its start, which is logged).
const SENDING_TIMEOUT: Duration = Duration::from_secs(5);

/// One published track: its audio source, track and publication, and the frame being filled.
struct Track {
    source: u64,
    track: u64,
    publication: u64,
    sid: String,
    /// [`Unpublished::generation`] when it was published.
    generation: u64,
    frames: Reframer,
    feeder: Feeder,
}

/// A joined LiveKit room.
pub(super) struct FfiRoom {
    client: &'static Client,
    room_handle: u64,
    local_handle: u64,
    /// Tracks by name; `None` once the room is left. Leaving takes the map, then each track
    /// under its slot's lock; a publish checks for `None` under both locks in turn, so it
    /// either finishes with its track before the leave takes it, or sees the room left and
    /// never creates a track in a room being left.
    tracks: Mutex<Option<HashMap<String, Slot>>>,
    /// Tracks of this room the server unpublished, told by the event callback.
    unpublished: Unpublished,
}

type Slot = Arc<tokio::sync::Mutex<Option<Track>>>;

impl FfiRoom {
    pub fn new(
        client: &'static Client,
        room_handle: u64,
        local_handle: u64,
        unpublished: Unpublished,
    ) -> Self {
        Self {
            client,
            room_handle,
            local_handle,
            tracks: Mutex::new(Some(HashMap::new())),
            unpublished,
        }
    }

    fn tracks(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, Slot>>> {
        self.tracks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn create_track(&self, name: &str) -> Result<Track, RoomError> {
        let c = self.client;
        let answer = c.request(ffi_request::Message::NewAudioSource(
            proto::NewAudioSourceRequest {
                r#type: proto::AudioSourceType::AudioSourceNative as i32,
                options: Some(proto::AudioSourceOptions {
                    echo_cancellation: false,
                    noise_suppression: false,
                    auto_gain_control: false,
                }),
                sample_rate: Some(format::SAMPLE_RATE),
                num_channels: Some(format::CHANNELS),
                queue_size_ms: Some(SOURCE_QUEUE_MS),
            },
        ))?;
        let ffi_response::Message::NewAudioSource(r) = answer else {
            return Err(unexpected("NewAudioSource", answer));
        };
        let source = r.source.handle.id;
        let answer = c.request(ffi_request::Message::CreateAudioTrack(
            proto::CreateAudioTrackRequest {
                name: name.to_string(),
                source_handle: source,
            },
        ));
        let track = match answer {
            Ok(ffi_response::Message::CreateAudioTrack(r)) => r.track.handle.id,
            other => {
                c.lib.drop_handle(source);
                return Err(other.and_then(|a| Err(unexpected("CreateAudioTrack", a)))?);
            }
        };
        let generation = self.unpublished.generation();
        let publication = match self.publish_track(track).await {
            Ok(p) => p,
            Err(e) => {
                c.lib.drop_handle(track);
                c.lib.drop_handle(source);
                return Err(match e {
                    RoomError::NotConnected(why) => {
                        RoomError::NotConnected(format!("publishing track {name}: {why}"))
                    }
                    e => e,
                });
            }
        };
        let feeder = Feeder::start(c, source);
        let waited = self.wait_until_sending(track, name).await;
        feeder.warmed();
        tracing::info!(
            room_handle = self.room_handle,
            track = name,
            waited_ms = waited.as_millis() as u64,
            "published track; its sender is sending"
        );
        Ok(Track {
            source,
            track,
            publication: publication.handle.id,
            sid: publication.info.sid,
            generation,
            frames: Reframer::default(),
            feeder,
        })
    }

    async fn publish_track(&self, track: u64) -> Result<proto::OwnedTrackPublication, RoomError> {
        let local = self.local_handle;
        let answer = self
            .client
            .call(
                move |id| {
                    ffi_request::Message::PublishTrack(proto::PublishTrackRequest {
                        local_participant_handle: local,
                        track_handle: track,
                        options: proto::TrackPublishOptions {
                            // Opus DTX: in silence (the source's own 10 ms feed between answers) the
                            // encoder sends a packet every 400 ms instead of every 20 ms.
                            // An idle published track: 46 -> 11 packets a second to each
                            // listener, 11 % less bridge CPU (BENCHMARKS.md, density).
                            dtx: Some(true),
                            red: Some(true),
                            source: Some(proto::TrackSource::SourceMicrophone as i32),
                        },
                        request_async_id: Some(id),
                    })
                },
                CALL_TIMEOUT,
            )
            .await?;
        use proto::publish_track_callback::Message as M;
        match answer {
            ffi_event::Message::PublishTrack(cb) => match cb.message {
                Some(M::Publication(p)) => Ok(p),
                Some(M::Error(e)) => Err(RoomError::NotConnected(e)),
                None => Err(unexpected("PublishTrack", "an empty callback")),
            },
            other => Err(unexpected("PublishTrack", other)),
        }
    }

    /// Waits until `track`'s sender has sent RTP (see the module's notes), at most
    /// [`SENDING_TIMEOUT`]; returns how long that took.
    async fn wait_until_sending(&self, track: u64, name: &str) -> Duration {
        let started = Instant::now();
        loop {
            match self.packets_sent(track).await {
                Ok(n) if n > 0 => return started.elapsed(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(room_handle = self.room_handle, track = name, error = %e,
                        "cannot tell whether the new track is sending; feeding it now (its first audio may be lost)");
                    return started.elapsed();
                }
            }
            if started.elapsed() >= SENDING_TIMEOUT {
                tracing::warn!(
                    room_handle = self.room_handle,
                    track = name,
                    timeout_s = SENDING_TIMEOUT.as_secs(),
                    "the new track is not sending yet (WebRTC negotiation is slow); feeding it now (its first audio may be lost)"
                );
                return started.elapsed();
            }
            tokio::time::sleep(SENDING_POLL).await;
        }
    }

    /// RTP packets `track`'s sender has sent.
    async fn packets_sent(&self, track: u64) -> Result<u64, RoomError> {
        let answer = self
            .client
            .call(
                move |id| {
                    ffi_request::Message::GetStats(proto::GetStatsRequest {
                        track_handle: track,
                        request_async_id: Some(id),
                    })
                },
                CALL_TIMEOUT,
            )
            .await?;
        let ffi_event::Message::GetStats(cb) = answer else {
            return Err(unexpected("GetStats", answer));
        };
        if let Some(e) = cb.error.filter(|e| !e.is_empty()) {
            return Err(RoomError::Library(format!("track statistics: {e}")));
        }
        Ok(cb
            .stats
            .iter()
            // Other kinds of statistics are not in the bridge's subset and decode as None.
            .filter_map(|s| s.stats.as_ref())
            .map(|proto::rtc_stats::Stats::OutboundRtp(o)| o.sent.packets_sent)
            .sum())
    }

    async fn unpublish(&self, t: Track) {
        // The clock first: no capture may reach a source being released.
        t.feeder.stop().await;
        let (local, sid) = (self.local_handle, t.sid.clone());
        let _ = self
            .client
            .call(
                move |id| {
                    ffi_request::Message::UnpublishTrack(proto::UnpublishTrackRequest {
                        local_participant_handle: local,
                        track_sid: sid,
                        stop_on_unpublish: true,
                        request_async_id: Some(id),
                    })
                },
                LEAVE_TIMEOUT,
            )
            .await;
        for h in [t.publication, t.track, t.source] {
            self.client.lib.drop_handle(h);
        }
    }
}

impl Room for FfiRoom {
    fn publish<'a>(
        &'a self,
        track: &'a str,
        pcm: &'a [u8],
    ) -> BoxFuture<'a, Result<(), RoomError>> {
        Box::pin(async move {
            let left = || RoomError::NotConnected("the room was left".into());
            let slot = match self.tracks().as_mut() {
                Some(tracks) => tracks.entry(track.to_string()).or_default().clone(),
                None => return Err(left()),
            };
            let mut slot = slot.lock().await;
            if self.tracks().is_none() {
                return Err(left());
            }
            // A track the server unpublished is released and published anew: while the
            // permission is still revoked that fails, saying why, and the caller's audio (a
            // playback, a StreamAudio chunk) fails with it rather than going nowhere.
            if let Some(gone) = slot.take_if(|t| self.unpublished.take(&t.sid, t.generation)) {
                tracing::info!(
                    room_handle = self.room_handle,
                    track,
                    "publishing again a track the server took out of the room"
                );
                // The library may still count it as published: unpublish it there too.
                self.unpublish(gone).await;
            }
            if !self.unpublished.may_publish() {
                // The library's PublishTrack would wait out its timeout: say why at once.
                return Err(RoomError::NotConnected(
                    "LiveKit revoked the bridge's permission to publish in this room \
                     (UpdateParticipant); audio can be sent once it is given back"
                        .into(),
                ));
            }
            let t = match slot.as_mut() {
                Some(t) => t,
                None => slot.insert(self.create_track(track).await?),
            };
            let mut rest = pcm;
            loop {
                let took = t.frames.fill(rest);
                rest = &rest[took..];
                if let Some(frame) = t.frames.full() {
                    let frame = *frame;
                    t.frames.clear();
                    t.feeder.send(frame).await?;
                } else if rest.is_empty() {
                    return Ok(());
                }
            }
        })
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(tracks) = self.tracks().take() else {
                return;
            };
            let c = self.client;
            for slot in tracks.into_values() {
                if let Some(t) = slot.lock().await.take() {
                    self.unpublish(t).await;
                }
            }
            let room = self.room_handle;
            let left = c
                .call(
                    move |id| {
                        ffi_request::Message::Disconnect(proto::DisconnectRequest {
                            room_handle: room,
                            request_async_id: Some(id),
                            reason: Some(proto::DisconnectReason::ClientInitiated as i32),
                        })
                    },
                    LEAVE_TIMEOUT,
                )
                .await;
            if let Err(e) = left {
                tracing::warn!(room_handle = room, error = %e, "leaving the LiveKit room did not finish");
            }
            c.routes.remove(room);
            c.lib.drop_handle(self.local_handle);
            c.lib.drop_handle(room);
            tracing::info!(room_handle = room, "left LiveKit room");
        })
    }
}
