//! StreamAudio: one bidirectional stream per user.
//!
//! The first client chunk names the session. Then two tasks run: one drains the session's ring
//! into the response (room audio out), one publishes the client's chunks into the room (client
//! audio in). How the stream ends tells the backend what to do:
//! - session left, replaced or shut down, or stream taken over by a newer StreamAudio: status
//!   OK, with the reason in the `x-bridge-end-reason` trailer (the backend does not reconnect);
//! - room lost: UNAVAILABLE (the backend reconnects);
//! - a bad client chunk: INVALID_ARGUMENT saying what was wrong; the session stays;
//! - the client fails or cancels: the session, and only that one, is closed.
//!
//! A client that stops reading fills a small queue, then HTTP/2 flow control; the writer stops
//! draining, and the ring's overflow policy drops and counts frames. Memory stays bounded and
//! nothing else slows down.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status, Streaming};

use super::{BridgeState, EventStream, OpenStream, checks};
use crate::audio::format;
use crate::error::BridgeError;
use crate::proto::AudioChunk;
use crate::room::track_name;
use crate::session::{EndReason, Session, StreamLease, unix_ms};

/// Chunks queued between the ring and the HTTP/2 stream.
const OUTBOUND_QUEUE: usize = 4;
/// How long the final status may wait for room in a stream whose client is not reading.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(1);
/// The room's audio format, which is also the only format accepted from the client.
const SAMPLE_RATE: i32 = format::SAMPLE_RATE as i32;
/// Trailer naming why a stream ended cleanly.
pub const END_REASON_TRAILER: &str = "x-bridge-end-reason";

pub(super) async fn open(
    state: Arc<BridgeState>,
    mut inbound: Streaming<AudioChunk>,
) -> Result<EventStream<AudioChunk>, Status> {
    state.refuse_if_draining()?;
    let wait = state.settings.first_chunk_timeout;
    let first = tokio::time::timeout(wait, inbound.message())
        .await
        .map_err(|_| {
            BridgeError::BadRequest(format!(
                "no AudioChunk within {wait:?}: the first chunk must name the session in user_id"
            ))
        })??
        .ok_or_else(|| {
            BridgeError::BadRequest(
                "the stream closed before its first AudioChunk, which must name the session in user_id".into(),
            )
        })?;
    checks::first_chunk(&first)?;
    let session = state.session(&first.user_id)?;
    if let Some((reason, _)) = session.ended() {
        if reason.retry_can_succeed() {
            return Err(BridgeError::SessionEnded(format!(
                "{}; call JoinRoom again",
                reason.describe()
            ))
            .into());
        }
        // Ended for good (taken over elsewhere, removed, left): this stream ends as the
        // session's did, OK with its reason, so a client that retries is not told to rejoin.
        return Ok(Box::pin(tokio_stream::once(Err(session_ended(&session)))));
    }
    validate(&first)?;
    let open = state.stream_opened();
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let Some(lease) = session.attach_stream().await else {
        return Err(taken_over_status());
    };
    let (fail_tx, fail_rx) = oneshot::channel();
    tokio::spawn(forward_client_audio(
        state.clone(),
        session.clone(),
        lease.id,
        lease.taken_over.clone(),
        inbound,
        first,
        fail_tx,
    ));
    tokio::spawn(pump_room_audio(state, session, lease, tx, fail_rx, open));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Checks a client chunk; its PCM, if it carries any.
fn validate(chunk: &AudioChunk) -> Result<Option<&[u8]>, BridgeError> {
    if chunk.pcm_data.is_empty() {
        return Ok(None);
    }
    checks::track(chunk.track_id)?;
    if chunk.sample_rate != 0 && chunk.sample_rate != SAMPLE_RATE {
        return Err(BridgeError::BadRequest(format!(
            "sample_rate {} is not supported: send 16000 Hz mono PCM16",
            chunk.sample_rate
        )));
    }
    if chunk.channels < 0 || chunk.channels as u32 > format::CHANNELS {
        return Err(BridgeError::BadRequest(format!(
            "channels {} is not supported: send mono (1) PCM16",
            chunk.channels
        )));
    }
    if chunk.pcm_data.len() % format::BYTES_PER_SAMPLE != 0 {
        return Err(BridgeError::BadRequest(format!(
            "pcm_data must hold whole 16-bit samples; got {} bytes",
            chunk.pcm_data.len()
        )));
    }
    Ok(Some(&chunk.pcm_data))
}

/// A stream that ends with status OK and says why in a trailer.
fn ended_cleanly(code: &'static str, message: String) -> Status {
    let mut trailers = MetadataMap::new();
    trailers.insert(END_REASON_TRAILER, MetadataValue::from_static(code));
    Status::with_metadata(Code::Ok, message, trailers)
}

fn taken_over_status() -> Status {
    ended_cleanly(
        "stream_taken_over",
        "stream taken over by a newer StreamAudio for this user".into(),
    )
}

/// The status a stream ends with when its session has ended.
fn session_ended(session: &Session) -> Status {
    match session.ended() {
        Some((reason, _)) if reason.retry_can_succeed() => {
            let mut status = Status::unavailable(reason.describe());
            status.metadata_mut().insert(
                END_REASON_TRAILER,
                MetadataValue::from_static(reason.code()),
            );
            status
        }
        Some((reason, _)) => ended_cleanly(reason.code(), reason.describe()),
        None => Status::internal("the session's audio ended while the session is open"),
    }
}

/// The stream's client failed or cancelled: close its session if this stream still owns it.
async fn client_gone(state: &BridgeState, session: &Session, stream_id: u64, why: &str) {
    if !session.owns_stream(stream_id) {
        return;
    }
    tracing::info!(
        user_id = session.user_id(),
        why,
        "stream client went away; closing its session"
    );
    state.registry.remove(session);
    session.close(EndReason::ClientGone(why.to_string())).await;
}

enum End {
    /// End with this status (OK with a reason, or an error).
    Status(Status),
    ClientGone,
}

async fn pump_room_audio(
    state: Arc<BridgeState>,
    session: Arc<Session>,
    lease: StreamLease,
    tx: mpsc::Sender<Result<AudioChunk, Status>>,
    failed: oneshot::Receiver<Status>,
    _open: OpenStream,
) {
    // The lease's other part (its detach stamp) stays in `lease` and goes with the function.
    let StreamLease {
        id,
        taken_over,
        mut consumer,
        ..
    } = lease;
    // Resolves with the status a bad client chunk ends the stream with; never otherwise.
    let mut failed = pin!(async move {
        match failed.await {
            Ok(status) => status,
            Err(_) => std::future::pending().await,
        }
    });
    // Each end condition is one future for the whole stream, created once rather than once
    // per frame (a small saving: 1.42 → 1.41 cores at 1,000 users, BENCHMARKS.md).
    let mut taken = pin!(taken_over.cancelled());
    let mut session_closed = pin!(session.closed());
    let end = loop {
        let permit = tokio::select! {
            biased;
            () = &mut taken => break End::Status(taken_over_status()),
            status = &mut failed => break End::Status(status),
            // A client that stops reading must not keep a closed session's stream alive.
            () = &mut session_closed => break End::Status(session_ended(&session)),
            permit = tx.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break End::ClientGone,
            },
        };
        let mut pcm = Vec::with_capacity(2 * format::FRAME_BYTES);
        let popped = tokio::select! {
            biased;
            () = &mut taken => break End::Status(taken_over_status()),
            status = &mut failed => break End::Status(status),
            () = tx.closed() => break End::ClientGone,
            popped = consumer.pop(&mut pcm) => popped,
        };
        let Some(arrived_ms) = popped else {
            break End::Status(session_ended(&session));
        };
        session.delivered(arrived_ms);
        state.metrics.delivered(unix_ms() - arrived_ms);
        permit.send(Ok(AudioChunk {
            pcm_data: pcm,
            sample_rate: SAMPLE_RATE,
            channels: format::CHANNELS as i32,
            timestamp_ms: arrived_ms,
            ..Default::default()
        }));
    };
    drop(consumer);
    match end {
        End::Status(status) => {
            // A client that reads nothing gets no status; its stream still ends.
            let _ = tokio::time::timeout(FINAL_STATUS_WAIT, tx.send(Err(status))).await;
        }
        End::ClientGone => client_gone(&state, &session, id, "response stream closed").await,
    }
}

async fn forward_client_audio(
    state: Arc<BridgeState>,
    session: Arc<Session>,
    stream_id: u64,
    taken_over: tokio_util::sync::CancellationToken,
    mut inbound: Streaming<AudioChunk>,
    first: AudioChunk,
    fail: oneshot::Sender<Status>,
) {
    let mut next = Some(first);
    loop {
        if let Some(chunk) = next.take() {
            match validate(&chunk) {
                Err(e) => {
                    let _ = fail.send(e.into());
                    return;
                }
                Ok(None) => {}
                Ok(Some(pcm)) => {
                    let track = track_name(chunk.track_id);
                    let published = tokio::select! {
                        biased;
                        () = taken_over.cancelled() => return,
                        () = session.closed() => return,
                        r = session.room().publish(&track, pcm) => r,
                    };
                    if let Err(e) = published {
                        // The room is gone; the session's own close ends the stream.
                        tracing::debug!(user_id = session.user_id(), error = %e, "publish failed");
                        return;
                    }
                    state.metrics.chunk_published();
                }
            }
        }
        let message = tokio::select! {
            biased;
            () = taken_over.cancelled() => return,
            () = session.closed() => return,
            m = inbound.message() => m,
        };
        match message {
            Ok(Some(chunk)) => next = Some(chunk),
            // The client has nothing more to send; room audio keeps flowing to it.
            Ok(None) => return,
            // A chunk over the message limit is a bad chunk, not a client that went away: the
            // stream ends OUT_OF_RANGE and the session stays for the next stream.
            Err(status) if status.code() == Code::OutOfRange => {
                let limit = crate::server::MAX_MESSAGE_BYTES;
                let _ = fail.send(Status::out_of_range(format!(
                    "an AudioChunk is over the {limit}-byte message limit ({}); send audio in \
                     chunks of at most a few seconds",
                    status.message()
                )));
                return;
            }
            Err(status) => {
                client_gone(&state, &session, stream_id, status.message()).await;
                return;
            }
        }
    }
}
