//! The decode thread: body bytes in, 10 ms frames out.
//!
//! Symphonia is synchronous, so each playback decodes on its own named thread. It reads the
//! body through [`BodyReader`] (blocking on the fetch task's channel) and hands frames to the
//! playout task through a bounded channel, which is what holds it to a few seconds ahead of
//! the room. It stops when its cancel flag is raised or either channel closes, and says so
//! through the `exited` signal, so a stopped playback can wait until it is really gone.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes};
use symphonia::core::audio::{AudioBufferRef, SampleBuffer};
use symphonia::core::codecs::{CODEC_TYPE_NULL, CodecParameters, Decoder, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader, Packet};
use symphonia::core::io::{MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::fetch::BodyReceiver;
use super::frames::{MAX_RATE, MIN_RATE};
use super::{FrameMaker, Gauge, PlaybackError, PlaybackStats};

/// Decode errors in a row after which the audio counts as corrupt.
const MAX_BAD_PACKETS: u32 = 8;
/// Bytes looked at before probing, to tell an error page from audio.
const SNIFF_BYTES: usize = 64;
/// The most channels a source may have (as many as symphonia can describe).
pub const MAX_CHANNELS: usize = 32;
/// The most samples (frames x channels) one decoded packet may hold: a FLAC block of the
/// largest legal size in 8 channels fits; MP3 needs 2,304, Vorbis at most 8,192 per channel.
/// The decoder's and our own packet buffers are sized from this, never from the file alone.
pub const MAX_PACKET_SAMPLES: u64 = 1 << 19;

/// How to decode: hints about the format, and what to make of it.
#[derive(Clone, Debug)]
pub struct DecodeJob {
    /// The HTTP status the body came with, for error messages.
    pub status: u16,
    pub content_type: Option<String>,
    pub extension: Option<String>,
    pub volume: f32,
    pub out_rate: u32,
}

/// What the decode thread sends to the playout task, in order: `Source`, `Frame`s, then `End`
/// or `Failed`.
#[derive(Debug)]
pub enum Decoded {
    Source(SourceInfo),
    /// 10 ms of PCM16 LE at the output rate.
    Frame(Vec<u8>),
    /// The audio ended; `samples` real samples were sent (padding excluded).
    End {
        samples: u64,
    },
    Failed(PlaybackError),
}

/// What the source turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    pub codec: String,
    pub sample_rate: u32,
    pub channels: usize,
}

/// A running decoder (a thread, or a child process: `worker`).
pub struct DecodeThread {
    /// Raised when the playback stops: the decoder's result is not wanted any more.
    pub cancel: Arc<AtomicBool>,
    /// Cancelled with `cancel`, for decoders that wait asynchronously.
    pub stop: CancellationToken,
    /// Resolves (with an error, the sender being dropped) when the decoder has exited.
    pub exited: oneshot::Receiver<()>,
}

impl DecodeThread {
    pub(super) fn new() -> Self {
        Self {
            cancel: Arc::default(),
            stop: CancellationToken::new(),
            exited: oneshot::channel().1,
        }
    }

    pub(super) fn with_exit(mut self, exited: oneshot::Receiver<()>) -> Self {
        self.exited = exited;
        self
    }

    /// Tells the decoder to stop.
    pub fn request_stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.stop.cancel();
    }
}

/// Starts the decode thread.
pub fn spawn(
    body: BodyReceiver,
    job: DecodeJob,
    out: mpsc::Sender<Decoded>,
    stats: &Arc<PlaybackStats>,
) -> io::Result<DecodeThread> {
    let handle = DecodeThread::new();
    let (exit_tx, exited) = oneshot::channel::<()>();
    let running = Gauge::new(stats, |s| &s.decoders);
    let flag = handle.cancel.clone();
    std::thread::Builder::new()
        .name("playback-decode".into())
        .spawn(move || {
            // Dropped in reverse order: the gauge first, then the exit signal, so whoever waits
            // for the signal sees the thread uncounted.
            let _exit = exit_tx;
            let _running = running;
            let failure = Arc::new(OnceLock::new());
            let reader = BodyReader {
                body,
                current: Bytes::new(),
                failure: failure.clone(),
            };
            let mut sink = FrameSink {
                out: &out,
                cancel: &flag,
            };
            let last = match decode_contained(reader, &failure, &job, &mut |d| sink.send(d)) {
                Ok(samples) => Decoded::End { samples },
                Err(e) => Decoded::Failed(e),
            };
            if !flag.load(Ordering::Relaxed) {
                // The receiver may be gone already; then nobody is waiting for this.
                let _ = out.blocking_send(last);
            }
        })?;
    Ok(handle.with_exit(exited))
}

struct FrameSink<'a> {
    out: &'a mpsc::Sender<Decoded>,
    cancel: &'a AtomicBool,
}

impl FrameSink<'_> {
    fn send(&mut self, item: Decoded) -> bool {
        !self.cancel.load(Ordering::Relaxed) && self.out.blocking_send(item).is_ok()
    }
}

/// Reads the body from the fetch task's channel, blocking. A fetch failure is kept in
/// `failure` and surfaces as an I/O error to the decoder.
struct BodyReader {
    body: BodyReceiver,
    current: Bytes,
    failure: Arc<OnceLock<PlaybackError>>,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.body.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    let text = e.to_string();
                    let _ = self.failure.set(e);
                    return Err(io::Error::other(text));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// How the server described the body, for error messages. Never the body itself: the URL may
/// point into a network the caller cannot see, and its answers must not leak through us.
fn declared(job: &DecodeJob) -> String {
    let kind = job
        .content_type
        .as_deref()
        .map_or_else(|| "no Content-Type".into(), |t| format!("Content-Type {t}"));
    format!("HTTP {}, {kind}", job.status)
}

/// Refuses bodies that are plainly not audio: empty, or text such as an HTML error page.
fn sniff(prefix: &[u8], job: &DecodeJob) -> Result<(), PlaybackError> {
    let declared = declared(job);
    if prefix.is_empty() {
        return Err(PlaybackError::Unsupported(format!(
            "the server sent an empty body ({declared}), not audio"
        )));
    }
    let text = prefix
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == 0xEF || **b == 0xBB || **b == 0xBF)
        .copied()
        .next();
    if matches!(text, Some(b'<' | b'{' | b'[')) {
        let what = if text == Some(b'<') {
            "HTML or XML"
        } else {
            "JSON"
        };
        return Err(PlaybackError::Unsupported(format!(
            "the server sent {what} ({declared}), not audio"
        )));
    }
    Ok(())
}

/// Checks what the file's header says before anything is sized from it: symphonia's decoders
/// allocate their buffers from these values when they are made.
fn check_params(
    params: &symphonia::core::codecs::CodecParameters,
    codec: &str,
) -> Result<(), PlaybackError> {
    let bad = |what: String| PlaybackError::Unsupported(format!("the {codec} audio {what}"));
    match params.sample_rate {
        Some(rate) if (MIN_RATE..=MAX_RATE).contains(&rate) => {}
        Some(rate) => {
            return Err(bad(format!(
                "declares a sample rate of {rate} Hz; rates from {MIN_RATE} to {MAX_RATE} Hz \
                 are supported"
            )));
        }
        None => return Err(bad("declares no sample rate".into())),
    }
    let channels = params.channels.map_or(1, |c| c.count());
    if !(1..=MAX_CHANNELS).contains(&channels) {
        return Err(bad(format!(
            "declares {channels} channels; 1 to {MAX_CHANNELS} are supported"
        )));
    }
    if let Some(frames) = params.max_frames_per_packet {
        check_packet(frames, channels, codec)?;
    }
    Ok(())
}

fn check_packet(frames: u64, channels: usize, codec: &str) -> Result<(), PlaybackError> {
    if frames.saturating_mul(channels as u64) > MAX_PACKET_SAMPLES {
        return Err(PlaybackError::Unsupported(format!(
            "the {codec} audio declares packets of {frames} frames x {channels} channels; at \
             most {MAX_PACKET_SAMPLES} samples per packet are supported"
        )));
    }
    Ok(())
}

fn at(samples: u64, rate: u32) -> String {
    format!("{:.2} s", samples as f64 / f64::from(rate.max(1)))
}

fn stopped() -> PlaybackError {
    PlaybackError::Stopped("playback stopped".into())
}

/// [`decode`], with a panic inside it (the decoders are third-party code fed hostile bytes;
/// symphonia panics on some, e.g. a WAV declaring 0 Hz) turned into this playback's error,
/// never the process's or the caller's problem. What the decode thread and the fuzz target run.
pub fn decode_contained(
    reader: impl Read + Send + Sync + 'static,
    fetch_failure: &OnceLock<PlaybackError>,
    job: &DecodeJob,
    emit: &mut dyn FnMut(Decoded) -> bool,
) -> Result<u64, PlaybackError> {
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode(reader, fetch_failure, job, emit)
    }));
    decoded.unwrap_or_else(|_| {
        Err(PlaybackError::Corrupt(
            "the decoder failed on this audio (a damaged or hostile file)".into(),
        ))
    })
}

/// Decodes `reader` to the end, handing `emit` the source's description, then 10 ms frames.
/// `emit` returns false to stop. Returns the number of real samples emitted. When `reader`
/// fails because the download did, `fetch_failure` holds why. Used by the decode thread, and
/// by the benchmarks on bytes in memory.
pub fn decode(
    mut reader: impl Read + Send + Sync + 'static,
    fetch_failure: &OnceLock<PlaybackError>,
    job: &DecodeJob,
    emit: &mut dyn FnMut(Decoded) -> bool,
) -> Result<u64, PlaybackError> {
    let prefix = read_prefix(&mut reader).map_err(|e| fetch_error(fetch_failure, &e))?;
    sniff(&prefix, job)?;
    let mut source = Source::open(prefix, reader, job, fetch_failure)?;
    let mut output = Output::new(job);
    let codec = source.codec.clone();
    while let Some(packet) = source.next_packet(&output)? {
        if let Some(decoded) = source.decode(&packet, &output)? {
            output.push(decoded, &codec, emit)?;
        }
    }
    output.finish(&source, emit)
}

/// Why reading the body failed: the download's own failure if it has one.
fn fetch_error(failure: &OnceLock<PlaybackError>, e: &io::Error) -> PlaybackError {
    failure
        .get()
        .cloned()
        .unwrap_or_else(|| PlaybackError::Fetch(format!("reading the audio failed: {e}")))
}

/// The first [`SNIFF_BYTES`] of the body (fewer if it is shorter).
fn read_prefix(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut prefix = Vec::with_capacity(SNIFF_BYTES);
    while prefix.len() < SNIFF_BYTES {
        let mut buf = [0u8; SNIFF_BYTES];
        let want = SNIFF_BYTES - prefix.len();
        match reader.read(&mut buf[..want])? {
            0 => break,
            n => prefix.extend_from_slice(&buf[..n]),
        }
    }
    Ok(prefix)
}

/// The probed container, its audio track and that track's decoder.
struct Source<'a> {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    params: CodecParameters,
    /// The codec's short name, for messages.
    codec: String,
    /// Decode errors in a row so far.
    bad_in_a_row: u32,
    fetch_failure: &'a OnceLock<PlaybackError>,
}

impl<'a> Source<'a> {
    /// Probes the body (`prefix`, then the rest of `reader`) and opens its first audio track.
    fn open(
        prefix: Vec<u8>,
        reader: impl Read + Send + Sync + 'static,
        job: &DecodeJob,
        fetch_failure: &'a OnceLock<PlaybackError>,
    ) -> Result<Self, PlaybackError> {
        let mut hint = Hint::new();
        if let Some(ext) = &job.extension {
            hint.with_extension(ext);
        }
        if let Some(ct) = &job.content_type {
            hint.mime_type(ct);
        }
        let source = Read::chain(io::Cursor::new(prefix), reader);
        let stream =
            MediaSourceStream::new(Box::new(ReadOnlySource::new(source)), Default::default());
        let options = FormatOptions {
            enable_gapless: true,
            ..Default::default()
        };
        let probed = symphonia::default::get_probe()
            .format(&hint, stream, &options, &MetadataOptions::default())
            .map_err(|e| match e {
                SymError::IoError(io) if fetch_failure.get().is_some() => {
                    fetch_error(fetch_failure, &io)
                }
                SymError::IoError(_) | SymError::Unsupported(_) => {
                    PlaybackError::Unsupported(format!(
                        "not a supported audio format (MP3, WAV, Ogg Vorbis, FLAC) ({})",
                        declared(job)
                    ))
                }
                other => PlaybackError::Corrupt(format!("the audio's header is corrupt: {other}")),
            })?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| PlaybackError::Unsupported("the file has no audio track".into()))?;
        let track_id = track.id;
        let params = track.codec_params.clone();
        let codec = symphonia::default::get_codecs()
            .get_codec(params.codec)
            .map_or("unknown", |d| d.short_name)
            .to_string();
        check_params(&params, &codec)?;
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| PlaybackError::Unsupported(format!("cannot decode {codec} audio: {e}")))?;
        Ok(Self {
            format,
            decoder,
            track_id,
            params,
            codec,
            bad_in_a_row: 0,
            fetch_failure,
        })
    }

    /// The track's next packet; `None` at the end of the audio.
    fn next_packet(&mut self, output: &Output) -> Result<Option<Packet>, PlaybackError> {
        loop {
            match self.format.next_packet() {
                Ok(p) if p.track_id() != self.track_id => continue,
                Ok(p) => return Ok(Some(p)),
                Err(SymError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(None);
                }
                Err(SymError::IoError(e)) => return Err(fetch_error(self.fetch_failure, &e)),
                Err(SymError::ResetRequired) => return Ok(None),
                Err(e) => return Err(output.corrupt(&self.codec, &self.params, e)),
            }
        }
    }

    /// Decodes one packet; `None` for a bad packet skipped (up to [`MAX_BAD_PACKETS`] in a
    /// row, then the audio is corrupt).
    fn decode(
        &mut self,
        packet: &Packet,
        output: &Output,
    ) -> Result<Option<AudioBufferRef<'_>>, PlaybackError> {
        match self.decoder.decode(packet) {
            Ok(d) => {
                self.bad_in_a_row = 0;
                Ok(Some(d))
            }
            Err(SymError::DecodeError(e)) => {
                self.bad_in_a_row += 1;
                if self.bad_in_a_row >= MAX_BAD_PACKETS {
                    return Err(output.corrupt(&self.codec, &self.params, e));
                }
                Ok(None)
            }
            Err(SymError::IoError(e)) if self.fetch_failure.get().is_some() => {
                Err(fetch_error(self.fetch_failure, &e))
            }
            Err(e) => Err(PlaybackError::Corrupt(format!(
                "cannot decode the {} audio: {e}",
                self.codec
            ))),
        }
    }
}

/// Decoded packets made into 10 ms frames at the output rate, from the first packet (which
/// fixes the source's rate and channels) to the last.
struct Output {
    out_rate: u32,
    volume: f32,
    maker: Option<FrameMaker>,
    samples: Option<SampleBuffer<f32>>,
}

impl Output {
    fn new(job: &DecodeJob) -> Self {
        Self {
            out_rate: job.out_rate,
            volume: job.volume,
            maker: None,
            samples: None,
        }
    }

    /// Source frames taken so far.
    fn position(&self) -> u64 {
        self.maker.as_ref().map_or(0, FrameMaker::input_frames)
    }

    /// The source's rate: the first packet's, or the container's before it.
    fn source_rate(&self, params: &CodecParameters) -> u32 {
        self.maker
            .as_ref()
            .map_or(params.sample_rate.unwrap_or(0), FrameMaker::input_rate)
    }

    /// The audio is corrupt where decoding has got to.
    fn corrupt(
        &self,
        codec: &str,
        params: &CodecParameters,
        e: impl std::fmt::Display,
    ) -> PlaybackError {
        PlaybackError::Corrupt(format!(
            "the {codec} audio is corrupt at {}: {e}",
            at(self.position(), self.source_rate(params))
        ))
    }

    /// Makes frames of one decoded packet; the first also describes the source to `emit`.
    fn push(
        &mut self,
        decoded: AudioBufferRef<'_>,
        codec: &str,
        emit: &mut dyn FnMut(Decoded) -> bool,
    ) -> Result<(), PlaybackError> {
        let spec = *decoded.spec();
        let channels = spec.channels.count();
        check_packet(decoded.capacity() as u64, channels, codec)?;
        let maker = match &mut self.maker {
            Some(m) => m,
            slot => {
                let maker = slot.insert(FrameMaker::new(spec.rate, self.out_rate, self.volume)?);
                let info = SourceInfo {
                    codec: codec.to_string(),
                    sample_rate: spec.rate,
                    channels,
                };
                if !emit(Decoded::Source(info)) {
                    return Err(stopped());
                }
                maker
            }
        };
        let buffer = match &mut self.samples {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            slot => slot.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        buffer.copy_interleaved_ref(decoded);
        let mut frame = |f: &[u8]| emit(Decoded::Frame(f.to_vec()));
        if !maker.push_interleaved(buffer.samples(), channels, &mut frame) {
            return Err(stopped());
        }
        Ok(())
    }

    /// Flushes the last frame; the real samples emitted. Audio that ends well before the
    /// length its header declares is corrupt (a cut download that looks complete).
    fn finish(
        self,
        source: &Source<'_>,
        emit: &mut dyn FnMut(Decoded) -> bool,
    ) -> Result<u64, PlaybackError> {
        let codec = &source.codec;
        let Some(mut m) = self.maker else {
            return Err(PlaybackError::Unsupported(format!(
                "no audio could be decoded from the {codec} stream"
            )));
        };
        let total = m
            .finish(&mut |f: &[u8]| emit(Decoded::Frame(f.to_vec())))
            .ok_or_else(stopped)?;
        if let Some(declared) = source.params.n_frames {
            let (decoded, rate) = (m.input_frames(), m.input_rate());
            let slack = (declared / 50).max(u64::from(rate) / 10);
            if decoded + slack < declared {
                return Err(PlaybackError::Corrupt(format!(
                    "the {codec} audio is cut short: it declares {} but ends after {}",
                    at(declared, rate),
                    at(decoded, rate)
                )));
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(content_type: Option<&str>) -> DecodeJob {
        DecodeJob {
            status: 200,
            content_type: content_type.map(str::to_string),
            extension: None,
            volume: 1.0,
            out_rate: 16_000,
        }
    }

    #[test]
    fn error_pages_and_empty_bodies_are_not_audio() {
        let mpeg = job(Some("audio/mpeg"));
        assert!(sniff(b"", &mpeg).is_err());
        let html = sniff(b"\n  <!DOCTYPE html><html>secret", &mpeg);
        assert!(
            matches!(&html, Err(PlaybackError::Unsupported(m)) if m.contains("HTML") && m.contains("audio/mpeg") && m.contains("HTTP 200")),
            "{html:?}"
        );
        let json = sniff(b"{\"token\":\"secret\"}", &job(None));
        assert!(matches!(&json, Err(PlaybackError::Unsupported(m)) if m.contains("JSON")));
        for e in [html, json] {
            let text = e.expect_err("refused").to_string();
            assert!(
                !text.contains("secret") && !text.contains("DOCTYPE"),
                "{text}"
            );
        }
        assert!(sniff(b"ID3\x04\x00", &job(None)).is_ok());
        assert!(sniff(b"RIFF\x24\x00\x00\x00WAVE", &job(None)).is_ok());
        assert!(sniff(&[0xff, 0xfb, 0x90, 0x64], &job(None)).is_ok());
    }
}
