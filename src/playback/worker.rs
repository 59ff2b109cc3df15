//! Decoding in a child process with an address-space limit.
//!
//! The decoders are third-party code fed whatever a URL returns, and some of them size buffers
//! from lengths the file declares before reading it (symphonia 0.5: RIFF INFO chunks, Vorbis
//! comments, FLAC pictures, ID3v2 frames, Vorbis codebooks of up to 2^40 entries). No check on
//! our side can see all of those. So the release binary decodes each playback in a child,
//! `livekit-bridge decode-worker <MiB>`, which limits its own address space (`RLIMIT_AS`) first:
//! a file that asks for too much kills that child, and the playback fails; the bridge, and
//! every other session, never notice. A child costs one fork and exec per PlayAudio.
//!
//! The protocol, over the child's stdin and stdout:
//! - stdin: a header (HTTP status `u16`, volume `f32`, output rate `u32`, Content-Type and
//!   extension as `u16` length + UTF-8), then the body's bytes until end of file;
//! - stdout: messages `tag: u8, len: u32, payload` (little-endian): `S` source (rate `u32`,
//!   channels `u32`, codec), `F` one 10 ms frame, then `E` end (samples `u64`) or `X` failure
//!   (kind `u8`: `U` unsupported, `C` corrupt; message). Anything else, or end of file before
//!   `E`/`X`, means the child died.
//!
//! Backpressure is the pipes': the parent stops reading when the playout's frame queue is
//! full, so the child blocks on a full pipe and never runs ahead.

use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::decode::{DecodeJob, DecodeThread, Decoded, SourceInfo, decode_contained};
use super::fetch::BodyReceiver;
use super::{Gauge, PlaybackError, PlaybackStats};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "decode-worker";
/// The largest message payload the parent accepts from a child.
const MAX_MESSAGE: u32 = 4096;

/// Where the decoder child's binary is and how much address space it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderProcess {
    pub exe: PathBuf,
    pub memory_mib: u64,
}

/// The child's `main`: limits itself, then decodes stdin to stdout. Returns the exit status.
pub fn serve(args: &[String]) -> u8 {
    let Some(mib) = args.first().and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("usage: livekit-bridge {SUBCOMMAND} <memory MiB>");
        return 64;
    };
    let bytes = mib.saturating_mul(1 << 20);
    // A child that runs out dies by abort: no core file (it would take seconds to write and
    // hold a hostile file's bytes).
    let _ = rlimit::setrlimit(rlimit::Resource::CORE, 0, 0);
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::AS, bytes, bytes) {
        eprintln!("{SUBCOMMAND}: cannot limit the address space: {e}");
        return 71;
    }
    let mut stdin = io::stdin();
    let job = match read_job(&mut stdin) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("{SUBCOMMAND}: bad job header: {e}");
            return 65;
        }
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let decoded = decode_contained(stdin, &OnceLock::new(), &job, &mut |d| {
        // Each message is flushed at once: the first frame's latency is the playback's.
        write_message(&mut out, &d)
            .and_then(|()| out.flush())
            .is_ok()
    });
    let last = match decoded {
        Ok(samples) => Decoded::End { samples },
        Err(e) => Decoded::Failed(e),
    };
    match write_message(&mut out, &last).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 74,
    }
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_text(r: &mut impl Read) -> io::Result<Option<String>> {
    let len = usize::from(read_u16(r)?);
    let mut b = vec![0u8; len];
    r.read_exact(&mut b)?;
    let text = String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(text).filter(|t| !t.is_empty()))
}

fn read_job(r: &mut impl Read) -> io::Result<DecodeJob> {
    let status = read_u16(r)?;
    let volume = f32::from_bits(read_u32(r)?);
    let out_rate = read_u32(r)?;
    Ok(DecodeJob {
        status,
        volume,
        out_rate,
        content_type: read_text(r)?,
        extension: read_text(r)?,
    })
}

fn job_header(job: &DecodeJob) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(&job.status.to_le_bytes());
    h.extend_from_slice(&job.volume.to_bits().to_le_bytes());
    h.extend_from_slice(&job.out_rate.to_le_bytes());
    for text in [&job.content_type, &job.extension] {
        // Content-Type is at most a header's length; a longer one is dropped, not cut.
        let text = text.as_deref().filter(|t| t.len() <= usize::from(u16::MAX));
        let bytes = text.unwrap_or_default().as_bytes();
        h.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        h.extend_from_slice(bytes);
    }
    h
}

fn write_message(w: &mut impl Write, d: &Decoded) -> io::Result<()> {
    let (tag, payload): (u8, Vec<u8>) = match d {
        Decoded::Source(s) => {
            let mut p = Vec::with_capacity(8 + s.codec.len());
            p.extend_from_slice(&s.sample_rate.to_le_bytes());
            p.extend_from_slice(&(s.channels as u32).to_le_bytes());
            p.extend_from_slice(s.codec.as_bytes());
            (b'S', p)
        }
        Decoded::Frame(pcm) => (b'F', pcm.clone()),
        Decoded::End { samples } => (b'E', samples.to_le_bytes().to_vec()),
        Decoded::Failed(e) => {
            let kind = match e {
                PlaybackError::Unsupported(_) => b'U',
                _ => b'C',
            };
            let text = e.to_string();
            let text = &text.as_bytes()[..text.len().min(MAX_MESSAGE as usize - 1)];
            (b'X', [&[kind][..], text].concat())
        }
    };
    w.write_all(&[tag])?;
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(&payload)
}

/// One message from the child, or `None` at end of file or on anything malformed.
async fn read_message(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Decoded> {
    let tag = r.read_u8().await.ok()?;
    let len = r.read_u32_le().await.ok()?;
    if len > MAX_MESSAGE {
        return None;
    }
    let mut p = vec![0u8; len as usize];
    r.read_exact(&mut p).await.ok()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match tag {
        b'S' if p.len() >= 8 => Some(Decoded::Source(SourceInfo {
            sample_rate: u32::from_le_bytes(p[0..4].try_into().ok()?),
            channels: u32::from_le_bytes(p[4..8].try_into().ok()?) as usize,
            codec: text(&p[8..]),
        })),
        b'F' => Some(Decoded::Frame(p)),
        b'E' if p.len() == 8 => Some(Decoded::End {
            samples: u64::from_le_bytes(p[..].try_into().ok()?),
        }),
        b'X' if !p.is_empty() => Some(Decoded::Failed(match p[0] {
            b'U' => PlaybackError::Unsupported(text(&p[1..])),
            _ => PlaybackError::Corrupt(text(&p[1..])),
        })),
        _ => None,
    }
}

/// Starts a decoder child for one playback: the body goes to its stdin, its frames to `out`.
/// The returned handle stops it (the child is killed) and says when it is gone.
pub fn spawn(
    process: &DecoderProcess,
    mut body: BodyReceiver,
    job: DecodeJob,
    out: mpsc::Sender<Decoded>,
    stats: &Arc<PlaybackStats>,
) -> io::Result<DecodeThread> {
    let mut child = tokio::process::Command::new(&process.exe)
        .arg(SUBCOMMAND)
        .arg(process.memory_mib.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("the decoder's pipes were not set up"));
    };
    let handle = DecodeThread::new();
    let (cancel, stop) = (handle.cancel.clone(), handle.stop.clone());
    let (exit_tx, exited) = oneshot::channel::<()>();
    let running = Gauge::new(stats, |s| &s.decoders);
    let memory = process.memory_mib;
    tokio::spawn(async move {
        let _exit = exit_tx;
        let _running = running;
        let fetch_failure = Arc::new(OnceLock::<PlaybackError>::new());
        // Its own task, so that the decoder's last word is not held up by a download that is
        // still trickling in; aborted when the decoder is done.
        let feed = tokio::spawn({
            let fetch_failure = fetch_failure.clone();
            async move {
                if stdin.write_all(&job_header(&job)).await.is_err() {
                    return;
                }
                while let Some(item) = body.recv().await {
                    match item {
                        Ok(chunk) => {
                            if stdin.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = fetch_failure.set(e);
                            return;
                        }
                    }
                }
                // Dropping stdin here is the body's end of file.
            }
        });
        let relay = async {
            loop {
                match read_message(&mut stdout).await {
                    Some(last @ (Decoded::End { .. } | Decoded::Failed(_))) => break Some(last),
                    Some(item) => {
                        if out.send(item).await.is_err() {
                            break None;
                        }
                    }
                    None => break None,
                }
            }
        };
        let last = tokio::select! {
            () = stop.cancelled() => None,
            last = relay => last,
        };
        feed.abort();
        let _ = feed.await;
        let _ = child.start_kill();
        let status = child.wait().await;
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let last = match (fetch_failure.get().cloned(), last) {
            // A download that failed explains whatever the decoder made of its cut body.
            (Some(e), _) => Decoded::Failed(e),
            (None, Some(last)) => last,
            (None, None) => Decoded::Failed(PlaybackError::Corrupt(format!(
                "the decoder could not finish this audio within its {memory} MiB \
                 (PLAYBACK_DECODER_MEMORY_MB); a damaged or hostile file ({})",
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            ))),
        };
        let _ = out.send(last).await;
    });
    Ok(handle.with_exit(exited))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip() {
        let items = [
            Decoded::Source(SourceInfo {
                codec: "mp3".into(),
                sample_rate: 44_100,
                channels: 2,
            }),
            Decoded::Frame(vec![7; 320]),
            Decoded::Failed(PlaybackError::Unsupported("no".into())),
            Decoded::End { samples: 12_345 },
        ];
        let mut wire = Vec::new();
        for item in &items {
            write_message(&mut wire, item).expect("write");
        }
        let mut r = &wire[..];
        for item in &items {
            let back = read_message(&mut r).await.expect("a message");
            assert_eq!(format!("{back:?}"), format!("{item:?}"));
        }
        assert!(read_message(&mut r).await.is_none());
        let job = DecodeJob {
            status: 200,
            content_type: Some("audio/mpeg".into()),
            extension: None,
            volume: 0.5,
            out_rate: 16_000,
        };
        let back = read_job(&mut &job_header(&job)[..]).expect("job");
        assert_eq!(format!("{back:?}"), format!("{job:?}"));
    }
}
