//! StreamAudio: one bidirectional stream per user.
//!
//! The first client chunk names the session. Then the response body ([`RoomAudio`]) polls the
//! session's ring directly from the task hyper drives the HTTP/2 stream with: a frame pushed by
//! the room wakes that task, which encodes it; no task or channel sits in between. A task
//! publishes the client's chunks into the room (client audio in), and a watcher task, idle
//! while audio flows, ends the stream for the reasons that do not come through the ring. How
//! the stream ends tells the backend what to do:
//! - session left or replaced, or stream taken over by a newer StreamAudio: status OK, with the
//!   reason in the `x-bridge-end-reason` trailer (the backend does not reconnect);
//! - room lost, or the bridge shutting down: UNAVAILABLE (the backend reconnects);
//! - a bad client chunk: INVALID_ARGUMENT saying what was wrong; the session stays;
//! - the client fails or cancels: the session, and only that one, is closed.
//!
//! A client that stops reading exhausts HTTP/2 flow control; hyper stops polling the body, and
//! the ring's overflow policy drops and counts frames. Memory stays bounded and nothing else
//! slows down. If such a stream must end (taken over, session closed), the watcher takes the
//! ring back and stops counting the stream at once; the status waits for the client to read.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::sync::oneshot;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status, Streaming};

use super::{BridgeState, EventStream, OpenStream, checks};
use crate::audio::format;
use crate::error::BridgeError;
use crate::proto::AudioChunk;
use crate::room::track_name;
use crate::session::{EndReason, Session, StreamLease, unix_ms};

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
    let Some(lease) = session.attach_stream().await else {
        return Err(taken_over_status());
    };
    let (fail_tx, fail_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = oneshot::channel();
    let taken_over = lease.taken_over.clone();
    let stream_id = lease.id;
    let attachment = Arc::new(Mutex::new(Attachment {
        lease: Some(lease),
        end: None,
        waker: None,
        open: Some(open),
    }));
    tokio::spawn(forward_client_audio(
        state.clone(),
        session.clone(),
        stream_id,
        taken_over.clone(),
        inbound,
        first,
        fail_tx,
    ));
    tokio::spawn(watch_end(
        state.clone(),
        session.clone(),
        stream_id,
        taken_over,
        fail_rx,
        gone_rx,
        attachment.clone(),
    ));
    Ok(Box::pin(RoomAudio {
        attachment,
        state,
        session,
        pcm: Vec::with_capacity(2 * format::FRAME_BYTES),
        finished: false,
        _gone: gone_tx,
    }))
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
    if !chunk
        .pcm_data
        .len()
        .is_multiple_of(format::BYTES_PER_SAMPLE)
    {
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
                MetadataValue::from_static(reason.code().as_str()),
            );
            status
        }
        Some((reason, _)) => ended_cleanly(reason.code().as_str(), reason.describe()),
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

/// What a stream's response body and its end watcher share. Locked once per poll of the body
/// by the task hyper polls it from, and once by the watcher when the stream ends, so it is
/// never contended on the audio path.
struct Attachment {
    /// The right to the session's ring; `None` once the stream has ended here, which frees the
    /// ring for a newer stream even if this one's client has stopped reading.
    lease: Option<StreamLease>,
    /// The status the body yields next, set by the watcher.
    end: Option<Status>,
    /// The body's task, woken when the watcher ends the stream.
    waker: Option<Waker>,
    /// Counts the stream as open until it has ended.
    open: Option<OpenStream>,
}

impl Attachment {
    /// Ends the stream here: the ring goes back to the session and the stream stops counting.
    /// Returns whether this call ended it.
    fn detach(&mut self) -> bool {
        self.open = None;
        self.lease.take().is_some()
    }
}

fn lock(a: &Mutex<Attachment>) -> MutexGuard<'_, Attachment> {
    a.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The response body: polls the session's ring directly from hyper's task for this stream,
/// so a frame costs one wake (push → this task) and no task or channel in between.
struct RoomAudio {
    attachment: Arc<Mutex<Attachment>>,
    state: Arc<BridgeState>,
    session: Arc<Session>,
    /// The next frame's buffer, allocated before it is needed.
    pcm: Vec<u8>,
    /// The body has yielded its last item.
    finished: bool,
    /// Dropped with the body; tells the watcher if the client went away first.
    _gone: oneshot::Sender<()>,
}

impl Stream for RoomAudio {
    type Item = Result<AudioChunk, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let RoomAudio {
            attachment,
            state,
            session,
            pcm,
            finished,
            ..
        } = self.get_mut();
        if *finished {
            return Poll::Ready(None);
        }
        let mut a = lock(attachment);
        // The last item: the status the stream ends with, the ring given back.
        let mut finish = |a: &mut Attachment, status: Status| {
            a.detach();
            *finished = true;
            Poll::Ready(Some(Err(status)))
        };
        if let Some(status) = a.end.take() {
            return finish(&mut a, status);
        }
        let Some(lease) = a.lease.as_mut() else {
            // Ended without a status to give: only after the status was yielded.
            *finished = true;
            return Poll::Ready(None);
        };
        match lease.consumer.poll_pop(cx, pcm) {
            Poll::Ready(Some(arrived_ms)) => {
                session.delivered(arrived_ms);
                state.metrics.delivered(unix_ms() - arrived_ms);
                let pcm = std::mem::replace(pcm, Vec::with_capacity(2 * format::FRAME_BYTES));
                Poll::Ready(Some(Ok(AudioChunk {
                    pcm_data: pcm,
                    sample_rate: SAMPLE_RATE,
                    channels: format::CHANNELS as i32,
                    timestamp_ms: arrived_ms,
                    ..Default::default()
                })))
            }
            // The ring closes only when the session does.
            Poll::Ready(None) => finish(&mut a, session_ended(session)),
            Poll::Pending => {
                if !a.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    a.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Ends a stream for the reasons that do not come through its ring: taken over, a bad client
/// chunk, the session closing while the client is not reading, or the client going away. It
/// runs once per stream and does nothing per frame.
async fn watch_end(
    state: Arc<BridgeState>,
    session: Arc<Session>,
    stream_id: u64,
    taken_over: CancellationToken,
    failed: oneshot::Receiver<Status>,
    gone: oneshot::Receiver<()>,
    attachment: Arc<Mutex<Attachment>>,
) {
    // Resolves with the status a bad client chunk ends the stream with; never otherwise.
    let failed = async move {
        match failed.await {
            Ok(status) => status,
            Err(_) => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        biased;
        () = taken_over.cancelled() => Some(taken_over_status()),
        status = failed => Some(status),
        // A client that stops reading must not keep a closed session's ring or count.
        () = session.closed() => Some(session_ended(&session)),
        _ = gone => None,
    };
    let client_left = end.is_none();
    let (ended_here, waker) = {
        let mut a = lock(&attachment);
        let ended_here = a.detach();
        if ended_here {
            a.end = end;
        }
        (ended_here, a.waker.take())
    };
    if !ended_here {
        // The body ended first, through its ring, and has yielded its status.
        return;
    }
    if client_left {
        // The body went away while it still had the ring: its client did.
        client_gone(&state, &session, stream_id, "response stream closed").await;
    } else if let Some(waker) = waker {
        // The body yields the status when hyper next polls it; a client that reads nothing
        // gets no status, but its stream has ended here.
        waker.wake();
    }
}

async fn forward_client_audio(
    state: Arc<BridgeState>,
    session: Arc<Session>,
    stream_id: u64,
    taken_over: CancellationToken,
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
                let limit = super::checks::MAX_MESSAGE_BYTES;
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
