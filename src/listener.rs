//! Accepting connections so that no client, and no shortage of file descriptors, can starve
//! the others; and owning the Unix socket path without ever taking another process's.
//!
//! [`incoming`] runs the accept loop on its own task and hands tonic only connections it may
//! keep:
//! - **Out of descriptors or memory** (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): accepting again
//!   at once would fail again at once (the connection stays in the backlog), so the loop backs
//!   off, 10 ms doubling to 1 s, and logs once per burst, then once when it recovers. Errors that
//!   belong to one connection (`ECONNABORTED`, ...) are skipped without waiting.
//! - **At most `max_connections`** at a time: one more is accepted and closed at once, so its
//!   client fails fast and can go elsewhere instead of waiting in the backlog.
//! - **A handshake deadline**: a connection that has not sent the HTTP/2 preface and the
//!   header of its first frame within `handshake_timeout` is closed. Until then every read is
//!   raced against the deadline; afterwards reads pass straight through.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::authority::AuthorityFix;

/// The client's HTTP/2 connection preface (24 bytes) and the 9-byte header of the SETTINGS
/// frame that must follow it.
const HANDSHAKE_BYTES: u64 = 24 + 9;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refused connections are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Limits on client connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a new connection may take to start speaking HTTP/2.
    pub handshake_timeout: Duration,
}

impl ConnectionLimits {
    /// BRIDGE_MAX_CONNECTIONS and BRIDGE_HANDSHAKE_TIMEOUT_MS by default.
    pub const DEFAULT: Self = Self {
        max_connections: 1024,
        handshake_timeout: Duration::from_secs(5),
    };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A listening socket the accept loop can drive.
pub trait Listener: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;
    async fn accept_one(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        // Audio is many small messages; a delayed ACK would hold each back by up to 40 ms.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Unix socket connections go through [`AuthorityFix`], so that clients that send the socket
/// path as `:authority` (grpcio, grpc-java, grpcurl) are served.
impl Listener for UnixListener {
    type Io = AuthorityFix<UnixStream>;
    async fn accept_one(&self) -> io::Result<AuthorityFix<UnixStream>> {
        Ok(AuthorityFix::new(self.accept().await?.0))
    }
}

/// The connections `listener` accepts, within `limits`. The accept loop stops when the
/// stream is dropped.
pub fn incoming<L: Listener>(
    listener: L,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<Conn<L::Io>>> + Send + 'static {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(accept_loop(listener, limits, tx));
    AbortOnDrop {
        inner: ReceiverStream::new(rx),
        task,
    }
}

struct AbortOnDrop<S> {
    inner: S,
    task: tokio::task::JoinHandle<()>,
}

impl<S: Stream + Unpin> Stream for AbortOnDrop<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<S> Drop for AbortOnDrop<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether an accept error means the process is out of a resource (so retrying at once is
/// pointless), rather than that one connection failed.
fn is_exhaustion(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12)) || e.kind() == io::ErrorKind::OutOfMemory
}

async fn accept_loop<L: Listener>(
    listener: L,
    limits: ConnectionLimits,
    tx: mpsc::Sender<io::Result<Conn<L::Io>>>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = BACKOFF_MIN;
    // Failed accepts in the current burst, and when it started.
    let mut burst: Option<(u64, Instant)> = None;
    let mut refused = 0u64;
    let mut refusal_logged: Option<Instant> = None;
    loop {
        let io = match listener.accept_one().await {
            Ok(io) => io,
            Err(e) if is_exhaustion(&e) => {
                match &mut burst {
                    Some((failed, _)) => *failed += 1,
                    None => {
                        tracing::warn!(error = %e, "cannot accept connections; backing off until resources free up");
                        burst = Some((1, Instant::now()));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "a connection failed while being accepted");
                continue;
            }
        };
        if let Some((failed, since)) = burst.take() {
            tracing::info!(
                failed_accepts = failed,
                after = ?since.elapsed(),
                "accepting connections again"
            );
        }
        backoff = BACKOFF_MIN;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused,
                    "too many connections; closing new ones (BRIDGE_MAX_CONNECTIONS)"
                );
                refusal_logged = Some(Instant::now());
            }
            drop(io);
            continue;
        };
        let conn = Conn {
            io,
            _permit: permit,
            handshake: Some(Handshake {
                seen: 0,
                deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            }),
        };
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}

struct Handshake {
    seen: u64,
    deadline: Pin<Box<Sleep>>,
}

/// An accepted connection: counted against the limit until dropped, and closed if it does not
/// start its HTTP/2 handshake in time.
pub struct Conn<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    handshake: Option<Handshake>,
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some(h) = &mut this.handshake {
                    h.seen += (buf.filled().len() - before) as u64;
                    if h.seen >= HANDSHAKE_BYTES {
                        this.handshake = None;
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if let Some(h) = &mut this.handshake {
                    ready!(h.deadline.as_mut().poll(cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not start HTTP/2 in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a Unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another process is serving on {0}; not starting (stop it first, or choose another \
         LIVEKIT_GRPC_SOCKET)"
    )]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not removing it (choose another LIVEKIT_GRPC_SOCKET)")]
    NotASocket(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A Unix socket path this process bound, and what proves it is still ours: its inode and
/// change time (an inode number alone is reused at once when a file is deleted and another
/// created).
#[derive(Clone, Debug)]
pub struct OwnedSocket {
    path: PathBuf,
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl OwnedSocket {
    /// Binds `path` with `mode`, creating its directory. A socket already at the path is
    /// removed only if nobody answers on it (a crashed bridge's leftover); if something
    /// answers, or the path is not a socket, binding is refused and nothing is touched.
    pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, Self), SocketError> {
        let fail = |what, source| SocketError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory of", e))?;
        }
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("cannot inspect", e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| fail("cannot remove the stale socket", e))?;
                    tracing::info!(path = %path.display(), "removed a stale socket nobody was serving on");
                }
                Err(e) => return Err(fail("cannot check who serves on", e)),
            },
        }
        // Bound and given its mode under a temporary name, then renamed into place, so that
        // the socket appears at the path only once it is ready and has the right mode.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let temporary = path.with_file_name(format!(
            ".{}.{}.binding",
            name.unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&temporary);
        let listener = UnixListener::bind(&temporary).map_err(|e| fail("cannot bind", e))?;
        let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail("cannot chmod", e))
            .and_then(|()| {
                std::fs::rename(&temporary, path).map_err(|e| fail("cannot move into place", e))
            });
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| fail("cannot inspect", e))?;
        let owned = Self {
            path: path.to_path_buf(),
            identity: identity(&meta),
        };
        Ok((listener, owned))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this process bound; a path that another
    /// process has bound since is left alone. Returns whether it removed it.
    pub fn remove(&self) -> bool {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.identity);
        if !ours {
            tracing::warn!(path = %self.path.display(), "the socket path is no longer ours; leaving it");
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket file");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_told_from_one_failed_connection() {
        for errno in [24, 23, 105, 12] {
            assert!(
                is_exhaustion(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // ECONNABORTED, EPROTO: that connection only.
        for errno in [103, 71] {
            assert!(
                !is_exhaustion(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    #[tokio::test]
    async fn a_live_socket_is_never_taken_and_a_stale_one_is() {
        let dir = std::env::temp_dir().join(format!("lkb-listener-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("b.sock");
        let (listener, first) = OwnedSocket::bind(&path, 0o666).expect("bind");
        assert!(matches!(
            OwnedSocket::bind(&path, 0o666),
            Err(SocketError::InUse(_))
        ));
        // Closed without removing the file, as a crash would leave it.
        drop(listener);
        let (_listener, second) = OwnedSocket::bind(&path, 0o666).expect("stale one replaced");
        assert!(
            !first.remove(),
            "the first owner must not remove the second's socket"
        );
        assert!(path.exists());
        assert!(second.remove());
        std::fs::write(&path, b"not a socket").expect("write");
        assert!(matches!(
            OwnedSocket::bind(&path, 0o666),
            Err(SocketError::NotASocket(_))
        ));
        assert!(path.exists(), "a regular file is never deleted");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
