//! Settings from command-line flags and the environment (flags win, and the last of a repeated
//! flag). Each setting is one field of [`Settings`]: its doc comment is its `--help` (and the
//! settings table in docs/operating.md, which a test checks against it), its `env` the
//! environment variable, its default a constant of the layer it sets, its value parser the
//! check of its range. A bad value does not stop the parse: every one is collected and
//! reported at once ([`ConfigErrors`], exit 64), each naming its setting.

use std::ffi::OsStr;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use reqwest::Url;

use crate::audio::{Overflow, RingConfig};
use crate::listener::ConnectionLimits;
pub use crate::logging::LogFormat;
use crate::playback::PlaybackSettings;
use crate::playback::egress::EgressPolicy;
use crate::room::AudioSource;
use crate::room::SimRooms;
use crate::room::ffi::LibraryLogs;
use crate::service::admission::Limits;
use crate::service::{ServiceSettings, TlsPem};

/// TCP port and address served on when no socket is set.
pub const PORT: u16 = 9090;
pub const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
/// The Unix socket's file mode: any local user, as the service the bridge replaces had it.
pub const SOCKET_MODE: u32 = 0o666;
/// The drain deadline on SIGTERM or SIGINT.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The address space of PlayAudio's decoder child, MiB.
pub const DECODER_MEMORY_MIB: u64 = 512;

/// Where the bridge listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Listen,
    /// The operators' HTTP listener (metrics and probes), if any.
    pub http_addr: Option<SocketAddr>,
    /// The Unix socket's file mode.
    pub socket_mode: u32,
    pub limits: ConnectionLimits,
    pub service: ServiceSettings,
    pub shutdown_timeout: Duration,
    /// The decoder child's address-space limit, MiB (the binary sets up the child).
    pub decoder_memory_mib: u64,
    pub log_format: LogFormat,
    pub log_filter: String,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    /// `ctl`: the operator's client, with its own options.
    Ctl(Box<crate::ctl::Ctl>),
    /// `--help` or `--version`: the text to print.
    Help(String),
}

/// A bad setting: which one (by environment name and flag) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every bad setting of one start, in the order of `--help`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, e) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Whether one of the errors is about `key` (an environment name or a flag).
    pub fn names(&self, key: &str) -> bool {
        self.0.iter().any(|e| e.key.contains(key))
    }
}

/// The command line.
#[derive(clap::Parser, Debug)]
#[command(
    name = "livekit-bridge",
    version,
    about = "A gRPC bridge between a cloud backend and LiveKit rooms.",
    long_about = None,
    after_help = "Every setting is a flag or an environment variable; flags win. A bad setting \
                  exits with status 64 and names it."
)]
pub struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(clap::Subcommand, Debug)]
enum Subcommand {
    /// Check and drive a running bridge (health, status, join, leave, play, stop, record).
    Ctl(crate::ctl::Ctl),
}

/// A setting's value as given: the value, or why it is not valid, so that one bad value does
/// not hide the next.
#[derive(Clone, Debug)]
struct Given<T>(Result<T, ConfigError>);

impl<T: fmt::Display> fmt::Display for Given<T> {
    /// Only defaults are displayed (clap renders them for `--help` and parses them back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(v) => v.fmt(f),
            Err(e) => e.fmt(f),
        }
    }
}

impl<T> Given<T> {
    fn ok(value: T) -> Self {
        Self(Ok(value))
    }

    /// The value, or `None` with its error added to `errors`.
    fn take(self, errors: &mut Vec<ConfigError>) -> Option<T> {
        self.0.map_err(|e| errors.push(e)).ok()
    }
}

/// A setting's check as a clap value parser that never fails the parse: the outcome, with the
/// setting named, is kept for [`Config`] to report with every other.
#[derive(Clone)]
struct Check<F>(F);

impl<T, F> TypedValueParser for Check<F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
{
    type Value = Given<T>;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Given<T>, clap::Error> {
        let checked = match value.to_str() {
            Some(text) => (self.0)(text),
            None => Err("is not valid UTF-8".into()),
        };
        Ok(Given(checked.map_err(|message| ConfigError {
            key: arg.map_or_else(|| "a setting".into(), key_of),
            message,
        })))
    }
}

/// `ENV (--flag)`, as every error names a setting.
fn key_of(arg: &clap::Arg) -> String {
    let flag = arg.get_long().unwrap_or_default();
    match arg.get_env().and_then(OsStr::to_str) {
        Some(env) => format!("{env} (--{flag})"),
        None => format!("--{flag}"),
    }
}

fn invalid(value: &str, expected: &str) -> String {
    format!("{value:?} is not valid; expected {expected}")
}

/// An integer in `lo..=hi`.
fn int(lo: u64, hi: u64) -> Check<impl Fn(&str) -> Result<u64, String> + Clone> {
    Check(move |text: &str| {
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| invalid(text, &format!("an integer in {lo}..={hi}")))
    })
}

/// Milliseconds in `lo..=hi`.
fn ms(lo: u64, hi: u64) -> Check<impl Fn(&str) -> Result<Millis, String> + Clone> {
    let int = int(lo, hi).0;
    Check(move |text: &str| int(text).map(|n| Millis(Duration::from_millis(n))))
}

/// Seconds in `lo..=hi`.
fn secs(lo: u64, hi: u64) -> Check<impl Fn(&str) -> Result<Secs, String> + Clone> {
    let int = int(lo, hi).0;
    Check(move |text: &str| int(text).map(|n| Secs(Duration::from_secs(n))))
}

/// One of the `(name, value)` pairs, by name.
fn one_of<T: Copy + Send + Sync + 'static>(
    names: &'static [(&'static str, T)],
) -> Check<impl Fn(&str) -> Result<Choice<T>, String> + Clone> {
    Check(move |text: &str| {
        names
            .iter()
            .find(|(name, _)| *name == text)
            .map(|&(name, value)| Choice { name, value })
            .ok_or_else(|| {
                let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                invalid(text, &all.join(", "))
            })
    })
}

/// A setting that is off when unset or empty (as an empty environment variable is): `check`
/// for any other value.
fn off_or<T, F>(check: F) -> Check<impl Fn(&str) -> Result<Option<T>, String> + Clone>
where
    F: Fn(&str) -> Result<T, String> + Clone,
{
    Check(move |text: &str| {
        if text.trim().is_empty() {
            Ok(None)
        } else {
            check(text).map(Some)
        }
    })
}

/// Any text.
fn any(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

/// A duration written in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_millis())
    }
}

/// A duration written in seconds; 0 where a setting says it means "never".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs())
    }
}

/// A file mode written in octal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mode(u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

const OVERFLOWS: &[(&str, Overflow)] = &[
    ("drop-newest", Overflow::DropNewest),
    ("drop-oldest", Overflow::DropOldest),
];
const SOURCES: &[(&str, AudioSource)] = &[
    ("data", AudioSource::Data),
    ("track", AudioSource::Track),
    ("both", AudioSource::Both),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const SIM_ROOMS: &[(&str, SimRooms)] =
    &[("front", SimRooms::Front), ("workers", SimRooms::Workers)];
const LIVEKIT_LOGS: &[(&str, LibraryLogs)] = &[
    ("captured", LibraryLogs::Captured),
    ("off", LibraryLogs::Off),
];

/// A value from a fixed set, with its name (how it is written and shown).
#[derive(Clone, Copy, Debug)]
struct Choice<T> {
    name: &'static str,
    value: T,
}

impl<T: PartialEq + Copy> Choice<T> {
    /// `value` as a default, named as `names` name it.
    fn of(names: &'static [(&'static str, T)], value: T) -> Given<Self> {
        let name = names
            .iter()
            .find(|(_, v)| *v == value)
            .map_or("", |(n, _)| *n);
        Given::ok(Self { name, value })
    }
}

impl<T> fmt::Display for Choice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Every setting of the bridge. A doc comment's first paragraph is the setting's help.
#[derive(clap::Args, Debug)]
struct Settings {
    /// Unix socket to serve on (directory created, mode --socket-mode). A socket nobody answers
    /// on is removed first; if a bridge answers there, or the path is not a socket, the bridge
    /// refuses to start. On exit it removes the socket only if it is still its own. When set,
    /// TCP is not used.
    #[arg(long, env = "LIVEKIT_GRPC_SOCKET", value_parser = off_or(any))]
    socket: Option<Given<Option<String>>>,
    /// The Unix socket's file mode, octal (0666: any local user; 0660 with a shared group keeps
    /// others out).
    #[arg(long, env = "LIVEKIT_GRPC_SOCKET_MODE", value_parser = Check(socket_mode),
          default_value_t = Given::ok(Mode(SOCKET_MODE)))]
    socket_mode: Given<Mode>,
    /// When set, every RPC (the contract's, grpc.health.v1 and reflection) must carry
    /// 'authorization: Bearer TOKEN', else UNAUTHENTICATED; 1 to 4096 visible ASCII
    /// characters. Off when unset.
    #[arg(long, env = "BRIDGE_AUTH_TOKEN", value_parser = off_or(auth_token))]
    auth_token: Option<Given<Option<String>>>,
    /// PEM certificate chain: the TCP listener speaks TLS (with --tls-key; both or neither).
    /// Not for the Unix socket, which its file mode protects. Plaintext when unset.
    #[arg(long, env = "BRIDGE_TLS_CERT", value_parser = off_or(any))]
    tls_cert: Option<Given<Option<String>>>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "BRIDGE_TLS_KEY", value_parser = off_or(any))]
    tls_key: Option<Given<Option<String>>>,
    /// TCP port to serve on when no socket is set.
    #[arg(long, env = "PORT", value_parser = int(0, 65_535), default_value_t = Given::ok(u64::from(PORT)))]
    port: Given<u64>,
    /// Address to bind the TCP port on.
    #[arg(long, env = "BRIDGE_HOST", value_parser = Check(ip), default_value_t = Given::ok(HOST))]
    host: Given<IpAddr>,
    /// Client connections open at once; one more is closed as soon as it is accepted.
    #[arg(long, env = "BRIDGE_MAX_CONNECTIONS", value_parser = int(1, 1_000_000),
          default_value_t = Given::ok(ConnectionLimits::DEFAULT.max_connections as u64))]
    max_connections: Given<u64>,
    /// A connection that has not started HTTP/2 within this long (ms) is closed.
    #[arg(long, env = "BRIDGE_HANDSHAKE_TIMEOUT_MS", value_parser = ms(100, 600_000),
          default_value_t = Given::ok(Millis(ConnectionLimits::DEFAULT.handshake_timeout)))]
    handshake_timeout_ms: Given<Millis>,
    /// How long (ms) JoinRoom waits for a room to connect before answering success: false.
    #[arg(long, env = "BRIDGE_CONNECT_TIMEOUT_MS", value_parser = ms(1, 600_000),
          default_value_t = Given::ok(Millis(ServiceSettings::CONNECT_TIMEOUT)))]
    connect_timeout_ms: Given<Millis>,
    /// Where the target's audio comes from: data (its data packets of 16 kHz PCM16; no track
    /// is subscribed to), track (its published audio track, decoded to 16 kHz mono; data
    /// packets ignored) or both (data packets win while they flow; the track is heard once
    /// none has come for 500 ms).
    #[arg(long, env = "BRIDGE_AUDIO_SOURCE", value_parser = one_of(SOURCES),
          default_value_t = Choice::of(SOURCES, AudioSource::default()))]
    audio_source: Given<Choice<AudioSource>>,
    /// Room audio buffered per session (ms of 10 ms frames) for a slow reader.
    #[arg(long, env = "BRIDGE_RING_MS", value_parser = int(10, 60_000),
          default_value_t = Given::ok(u64::from(RingConfig::DEFAULT_MS)))]
    ring_ms: Given<u64>,
    /// When a session's buffer is full: drop-newest (keep what is queued, as the service the
    /// bridge replaces did) or drop-oldest (also skip the stale half, back to live audio).
    #[arg(long, env = "BRIDGE_OVERFLOW", value_parser = one_of(OVERFLOWS),
          default_value_t = Choice::of(OVERFLOWS, Overflow::default()))]
    overflow: Given<Choice<Overflow>>,
    /// How long (ms) StreamAudio waits for the first chunk, which names the session.
    #[arg(long, env = "BRIDGE_FIRST_CHUNK_TIMEOUT_MS", value_parser = ms(1, 600_000),
          default_value_t = Given::ok(Millis(ServiceSettings::FIRST_CHUNK_TIMEOUT)))]
    first_chunk_timeout_ms: Given<Millis>,
    /// How long (s) GetStatus keeps reporting a session whose room was lost.
    #[arg(long, env = "BRIDGE_KEEP_ENDED_S", value_parser = secs(0, 86_400),
          default_value_t = Given::ok(Secs(ServiceSettings::KEEP_ENDED)))]
    keep_ended_s: Given<Secs>,
    /// Address (IP:port) of the operators' HTTP listener: /metrics (Prometheus), /livez,
    /// /readyz, /availability. Off when unset.
    #[arg(long, env = "BRIDGE_HTTP_ADDR", value_parser = off_or(socket_addr))]
    http_addr: Option<Given<Option<SocketAddr>>>,
    /// Sessions held at once; a JoinRoom for one more (not one replacing a user's live session)
    /// is refused at once: success: false, 'bridge at capacity'. 0: no limit.
    #[arg(long, env = "BRIDGE_MAX_SESSIONS", value_parser = int(0, 10_000_000),
          default_value_t = Given::ok(0))]
    max_sessions: Given<u64>,
    /// The machine's CPU use, a fraction of all its cores over the last 3 s, beyond which a
    /// JoinRoom is refused at once. 0: no limit.
    #[arg(long, env = "BRIDGE_MAX_CPU", value_parser = Check(cpu_fraction),
          default_value_t = Given::ok(0.0))]
    max_cpu: Given<f64>,
    /// A session with no StreamAudio attached for this long (s) is closed as idle and its room
    /// left (the backend went away without LeaveRoom). 0: never.
    #[arg(long, env = "BRIDGE_IDLE_S", value_parser = secs(0, 604_800),
          default_value_t = Given::ok(Secs(ServiceSettings::IDLE)))]
    idle_s: Given<Secs>,
    /// LiveKit's SDK library (liblivekit_ffi.so 1.2.1), needed for ws:// and wss:// rooms;
    /// scripts/fetch-livekit-ffi puts it at the default path.
    #[arg(long, env = "LIVEKIT_FFI_LIB", value_parser = Check(any),
          default_value_t = Given::ok(crate::room::DEFAULT_LIVEKIT_LIBRARY.to_string()))]
    livekit_ffi_lib: Given<String>,
    /// Joins of ws:// and wss:// rooms the bridge works on at once, over all its room
    /// workers; the others wait their turn, in order, within BRIDGE_CONNECT_TIMEOUT_MS. Each
    /// join in flight holds transient buffers the allocator keeps afterwards. 0: twice the
    /// cores.
    #[arg(long, env = "BRIDGE_JOINS_AT_ONCE", value_parser = int(0, 10_000),
          default_value_t = Given::ok(0))]
    joins_at_once: Given<u64>,
    /// Room worker processes for ws:// and wss:// rooms, each with its own LiveKit library: a
    /// fault inside the library ends one worker's sessions (as room_lost, so the backend
    /// rejoins them), not every user's. 0: one per core.
    #[arg(long, env = "BRIDGE_ROOM_WORKERS", value_parser = int(0, 256),
          default_value_t = Given::ok(0))]
    room_workers: Given<u64>,
    /// Where sim:// rooms run: front (in the bridge's own process) or workers (in the room
    /// workers, as ws:// rooms do: to see a worker's isolation, costs and faults without a
    /// LiveKit server; rooms in different workers share no simulated server).
    #[arg(long, env = "BRIDGE_SIM_ROOMS", value_parser = one_of(SIM_ROOMS),
          default_value_t = Choice::of(SIM_ROOMS, SimRooms::Front))]
    sim_rooms: Given<Choice<SimRooms>>,
    /// LiveKit's library's own log records: captured (into this log, under the target
    /// livekit_ffi, with its filter and format, access tokens redacted) or off (none). Captured,
    /// the library sends every record it makes, its verbose ones too: about 14 % of the CPU of
    /// a room listening to data packets, which off saves.
    #[arg(long, env = "BRIDGE_LIVEKIT_LOGS", value_parser = one_of(LIVEKIT_LOGS),
          default_value_t = Choice::of(LIVEKIT_LOGS, LibraryLogs::Captured))]
    livekit_logs: Given<Choice<LibraryLogs>>,
    /// PlayAudio: how long (ms) connecting to the audio URL's server may take.
    #[arg(long, env = "PLAYBACK_CONNECT_TIMEOUT_MS", value_parser = ms(1, 600_000),
          default_value_t = Given::ok(Millis(PlaybackSettings::CONNECT_TIMEOUT)))]
    playback_connect_timeout_ms: Given<Millis>,
    /// PlayAudio: the longest (ms) the audio server may go without sending a byte.
    #[arg(long, env = "PLAYBACK_READ_TIMEOUT_MS", value_parser = ms(1, 600_000),
          default_value_t = Given::ok(Millis(PlaybackSettings::READ_TIMEOUT)))]
    playback_read_timeout_ms: Given<Millis>,
    /// PlayAudio: how far (ms) playout may fall behind waiting for the download (and how long
    /// the first audio may take after the response headers) before it fails as too slow.
    #[arg(long, env = "PLAYBACK_MAX_STALL_MS", value_parser = ms(100, 600_000),
          default_value_t = Given::ok(Millis(PlaybackSettings::MAX_STALL)))]
    playback_max_stall_ms: Given<Millis>,
    /// PlayAudio: the address space (MiB) of the child process that decodes each playback; a
    /// file that needs more fails its playback and nothing else.
    #[arg(long, env = "PLAYBACK_DECODER_MEMORY_MB", value_parser = int(64, 65_536),
          default_value_t = Given::ok(DECODER_MEMORY_MIB))]
    playback_decoder_memory_mb: Given<u64>,
    /// PlayAudio: the largest audio file accepted, in bytes.
    #[arg(long, env = "PLAYBACK_MAX_BYTES", value_parser = int(1, 1 << 40),
          default_value_t = Given::ok(PlaybackSettings::MAX_BYTES))]
    playback_max_bytes: Given<u64>,
    /// PlayAudio: HTTP redirects followed before giving up.
    #[arg(long, env = "PLAYBACK_MAX_REDIRECTS", value_parser = int(0, 50),
          default_value_t = Given::ok(PlaybackSettings::MAX_REDIRECTS as u64))]
    playback_max_redirects: Given<u64>,
    /// PlayAudio: a PEM file of extra root certificates to trust for https URLs (an internal
    /// CA), besides the built-in web roots.
    #[arg(long, env = "PLAYBACK_CA_FILE", value_parser = off_or(any))]
    playback_ca_file: Option<Given<Option<String>>>,
    /// PlayAudio: host names (comma-separated; *.example.com for every name under it) that may
    /// be fetched whatever they resolve to. By default only public internet addresses are
    /// fetched: never loopback, private, link-local (cloud metadata), unique-local, multicast
    /// or reserved ones.
    #[arg(long, env = "PLAYBACK_ALLOW_HOSTS", value_parser = off_or(host_names))]
    playback_allow_hosts: Option<Given<Option<String>>>,
    /// PlayAudio: networks (comma-separated CIDRs, e.g. 10.20.0.0/16) that may be fetched from
    /// besides the public internet.
    #[arg(long, env = "PLAYBACK_ALLOW_NETS", value_parser = off_or(networks))]
    playback_allow_nets: Option<Given<Option<String>>>,
    /// PlayAudio: fetch every URL through this HTTP proxy, e.g.
    /// http://user:password@proxy.internal:3128 (CONNECT for https URLs). The proxy then
    /// resolves names and its access list governs them; the bridge still refuses non-public IP
    /// literals on every hop.
    #[arg(long, env = "PLAYBACK_PROXY", value_parser = off_or(proxy_url))]
    playback_proxy: Option<Given<Option<Url>>>,
    /// On SIGTERM or SIGINT, the deadline (ms) for ending streams and closing sessions.
    #[arg(long, env = "BRIDGE_SHUTDOWN_TIMEOUT_MS", value_parser = ms(0, 600_000),
          default_value_t = Given::ok(Millis(SHUTDOWN_TIMEOUT)))]
    shutdown_timeout_ms: Given<Millis>,
    /// Log format: text or json (logs go to stderr).
    #[arg(long, env = "LOG_FORMAT", value_parser = one_of(LOG_FORMATS),
          default_value_t = Choice::of(LOG_FORMATS, LogFormat::Text))]
    log_format: Given<Choice<LogFormat>>,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", value_parser = Check(any),
          default_value_t = Given::ok("info".to_string()))]
    log: Given<String>,
}

fn socket_mode(text: &str) -> Result<Mode, String> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .map(Mode)
        .ok_or_else(|| invalid(text, "an octal file mode, e.g. 0660"))
}

fn auth_token(text: &str) -> Result<String, String> {
    if text.len() <= 4096 && text.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(text.to_string());
    }
    // The value is a secret: never echoed.
    Err(invalid(
        "<redacted>",
        "1 to 4096 visible ASCII characters (no spaces)",
    ))
}

fn ip(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| invalid(text, "an IP address"))
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| invalid(text, "IP:port, e.g. 127.0.0.1:9091"))
}

fn cpu_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(invalid(
            text,
            "a fraction of the machine's cores in 0..=1 (0: no limit)",
        )),
    }
}

fn host_names(text: &str) -> Result<String, String> {
    if text.split(',').any(|h| h.trim().contains(['/', ' ', ':'])) {
        return Err(invalid(text, "host names, comma-separated"));
    }
    EgressPolicy::parse(text, "").map(|_| text.to_string())
}

fn networks(text: &str) -> Result<String, String> {
    EgressPolicy::parse("", text).map(|_| text.to_string())
}

/// The PlayAudio proxy: an http:// or https:// URL naming a host, and nothing past the port.
/// The value is never echoed whole, since it may carry the proxy's password.
fn proxy_url(text: &str) -> Result<Url, String> {
    let bad = |why: &str| format!("{why}; expected a proxy URL such as http://proxy.internal:3128");
    let url = Url::parse(text.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
    let shown = crate::playback::fetch::redacted(&url);
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(&format!(
            "{shown} has the scheme {:?}, and only http and https proxies are supported",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(&format!("{shown} names no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(&format!(
            "{shown} has a path or query, which a proxy does not take"
        )));
    }
    Ok(url)
}

/// An optional setting's value: `None` when unset, empty or bad (then with its error).
fn off<T>(given: Option<Given<Option<T>>>, errors: &mut Vec<ConfigError>) -> Option<T> {
    given.and_then(|g| g.take(errors)).flatten()
}

/// The TLS certificate chain and key, both or neither, each read and parsed as PEM.
fn tls_files(cert: Option<String>, key: Option<String>) -> Result<Option<TlsPem>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |key: &str, message: String| ConfigError {
        key: key.into(),
        message,
    };
    const CERT: &str = "BRIDGE_TLS_CERT (--tls-cert)";
    const KEY: &str = "BRIDGE_TLS_KEY (--tls-key)";
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(fail(KEY, "needed with BRIDGE_TLS_CERT".into())),
        (None, Some(_)) => return Err(fail(CERT, "needed with BRIDGE_TLS_KEY".into())),
        (Some(c), Some(k)) => (c, k),
    };
    let read = |setting: &str, path: &str| {
        std::fs::read(path).map_err(|e| fail(setting, format!("cannot read {path}: {e}")))
    };
    let (cert_pem, key_pem) = (read(CERT, &cert)?, read(KEY, &key)?);
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(CERT, format!("{cert}: {e}")))?;
    if certs.is_empty() {
        return Err(fail(CERT, format!("no PEM certificate in {cert}")));
    }
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| fail(KEY, format!("no PEM private key in {key}: {e}")))?;
    Ok(Some(TlsPem {
        cert: cert_pem,
        key: key_pem,
    }))
}

impl Settings {
    /// The settings, typed, or every one that is wrong: each is taken (its error, if any,
    /// kept) before any is used, so one bad value never hides another.
    fn into_config(self) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let e = &mut errors;
        let socket = off(self.socket, e);
        let socket_mode = self.socket_mode.take(e);
        let auth_token = off(self.auth_token, e);
        let (tls_cert, tls_key) = (off(self.tls_cert, e), off(self.tls_key, e));
        let port = self.port.take(e);
        let host = self.host.take(e);
        let max_connections = self.max_connections.take(e);
        let handshake_timeout = self.handshake_timeout_ms.take(e);
        let connect_timeout = self.connect_timeout_ms.take(e);
        let audio_source = self.audio_source.take(e);
        let ring_ms = self.ring_ms.take(e);
        let overflow = self.overflow.take(e);
        let first_chunk_timeout = self.first_chunk_timeout_ms.take(e);
        let keep_ended = self.keep_ended_s.take(e);
        let http_addr = off(self.http_addr, e);
        let max_sessions = self.max_sessions.take(e);
        let max_cpu = self.max_cpu.take(e);
        let idle = self.idle_s.take(e);
        let livekit_ffi_lib = self.livekit_ffi_lib.take(e);
        let joins_at_once = self.joins_at_once.take(e);
        let room_workers = self.room_workers.take(e);
        let sim_rooms = self.sim_rooms.take(e);
        let livekit_logs = self.livekit_logs.take(e);
        let playback_connect = self.playback_connect_timeout_ms.take(e);
        let playback_read = self.playback_read_timeout_ms.take(e);
        let playback_stall = self.playback_max_stall_ms.take(e);
        let decoder_memory = self.playback_decoder_memory_mb.take(e);
        let max_bytes = self.playback_max_bytes.take(e);
        let max_redirects = self.playback_max_redirects.take(e);
        let ca_file = off(self.playback_ca_file, e);
        let allow_hosts = off(self.playback_allow_hosts, e).unwrap_or_default();
        let allow_nets = off(self.playback_allow_nets, e).unwrap_or_default();
        let proxy = off(self.playback_proxy, e);
        let shutdown_timeout = self.shutdown_timeout_ms.take(e);
        let log_format = self.log_format.take(e);
        let log_filter = self.log.take(e);
        let tls = tls_files(tls_cert, tls_key).map_err(|err| e.push(err)).ok();
        if matches!(tls, Some(Some(_))) && socket.is_some() {
            e.push(ConfigError {
                key: "BRIDGE_TLS_CERT (--tls-cert)".into(),
                message: "TLS is for the TCP listener; a Unix socket (LIVEKIT_GRPC_SOCKET) is \
                          protected by its file mode"
                    .into(),
            });
        }
        // Each part was checked on its own; together they make the policy.
        let egress = EgressPolicy::parse(&allow_hosts, &allow_nets)
            .map_err(|message| {
                e.push(ConfigError {
                    key: "PLAYBACK_ALLOW_NETS (--playback-allow-nets)".into(),
                    message,
                })
            })
            .ok();
        let config = (|| {
            let (log_format, log_filter) = (log_format?.value, log_filter?);
            Some(Config {
                listen: match socket {
                    Some(path) => Listen::Unix(PathBuf::from(path)),
                    // In 0..=65535 by its check.
                    None => Listen::Tcp(SocketAddr::new(host?, port? as u16)),
                },
                http_addr,
                socket_mode: socket_mode?.0,
                limits: ConnectionLimits {
                    max_connections: max_connections? as usize,
                    handshake_timeout: handshake_timeout?.0,
                },
                service: ServiceSettings {
                    connect_timeout: connect_timeout?.0,
                    audio_source: audio_source?.value,
                    // In 10..=60000 by its check.
                    ring: RingConfig::for_duration_ms(ring_ms? as u32, overflow?.value),
                    first_chunk_timeout: first_chunk_timeout?.0,
                    keep_ended: keep_ended?.0,
                    playback: PlaybackSettings {
                        connect_timeout: playback_connect?.0,
                        read_timeout: playback_read?.0,
                        max_stall: playback_stall?.0,
                        max_bytes: max_bytes?,
                        max_redirects: max_redirects? as usize,
                        egress: egress?,
                        proxy,
                        ca_file: ca_file.map(PathBuf::from),
                        ..PlaybackSettings::default()
                    },
                    livekit_ffi_lib: PathBuf::from(livekit_ffi_lib?),
                    // In 0..=10000 by its check.
                    joins_at_once: joins_at_once? as usize,
                    // In 0..=256 by its check.
                    room_workers: room_workers? as usize,
                    sim_rooms: sim_rooms?.value,
                    livekit_logs: livekit_logs?.value,
                    worker_log: (log_format, log_filter.clone()),
                    room_worker_exe: None,
                    limits: Limits {
                        max_sessions: Some(max_sessions? as usize).filter(|n| *n > 0),
                        max_cpu: Some(max_cpu?).filter(|f| *f > 0.0),
                    },
                    idle: Some(idle?.0).filter(|d| !d.is_zero()),
                    auth_token,
                    tls: tls?,
                },
                shutdown_timeout: shutdown_timeout?.0,
                decoder_memory_mib: decoder_memory?,
                log_format,
                log_filter: log_filter.clone(),
            })
        })();
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// The command line's definition: the settings, `ctl`, and how every setting is shown.
fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        // A flag given twice: the last wins, as with the environment it overrides.
        .args_override_self(true)
        .mut_args(|a| {
            // --help must not print a token or path found in the environment.
            let a = a.hide_env_values(true);
            match a.get_env().and_then(OsStr::to_str).map(str::to_string) {
                Some(env) => a.value_name(env),
                None => a,
            }
        })
}

/// A clap error (an unknown flag, a flag without its value) as the setting it is about.
fn clap_error(e: &clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let key = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(a)) => a.split([' ', '=']).next().unwrap_or_default().into(),
        _ => "arguments".into(),
    };
    let rendered = e.render().to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    ConfigError { key, message }
}

impl Config {
    /// Parses `args` (without the program name) over the process environment.
    pub fn parse(args: &[String]) -> Result<Command, ConfigErrors> {
        Self::parse_with(command(), args)
    }

    /// Parses `args` with `command` (the tests' has no environment fallbacks).
    fn parse_with(command: clap::Command, args: &[String]) -> Result<Command, ConfigErrors> {
        use clap::FromArgMatches;
        let argv = std::iter::once("livekit-bridge".to_string()).chain(args.iter().cloned());
        let parsed = command
            .try_get_matches_from(argv)
            .and_then(|m| Cli::from_arg_matches(&m));
        let cli = match parsed {
            Ok(cli) => cli,
            Err(e) => {
                use clap::error::ErrorKind;
                return match e.kind() {
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                        Ok(Command::Help(e.render().to_string()))
                    }
                    _ => Err(ConfigErrors(vec![clap_error(&e)])),
                };
            }
        };
        match cli.command {
            Some(Subcommand::Ctl(ctl)) => Ok(Command::Ctl(Box::new(ctl))),
            None => cli
                .settings
                .into_config()
                .map(|c| Command::Run(Box::new(c))),
        }
    }
}

/// The `--help` text.
pub fn help() -> String {
    command().render_help().to_string()
}

/// One setting as `--help` and the settings table in docs/operating.md give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingDoc {
    pub flag: String,
    pub env: String,
    /// Empty when unset by default.
    pub default: String,
    pub help: String,
}

/// Every setting, in `--help`'s order.
pub fn settings() -> Vec<SettingDoc> {
    command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            Some(SettingDoc {
                flag: format!("--{}", a.get_long()?),
                env,
                default: a
                    .get_default_values()
                    .iter()
                    .filter_map(|d| d.to_str())
                    .collect::<Vec<_>>()
                    .join(","),
                help: a.get_help().map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The settings table of docs/operating.md, made from [`settings`].
pub fn settings_table() -> String {
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for s in settings() {
        let default = if s.default.is_empty() {
            "unset".to_string()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            s.flag,
            s.env,
            default,
            s.help.replace('|', "\\|").replace('\n', " ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses flags only: the tests must not depend on the process environment (so errors
    /// name the flag alone; tests/binary.rs checks they name the variable too).
    fn parse(args: &[&str]) -> Result<Command, ConfigErrors> {
        let command = command().mut_args(|a| a.env(None::<&str>));
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Config::parse_with(command, &args)
    }

    fn run(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Command::Run(c)) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_layers_own() {
        let c = run(&[]);
        assert_eq!(c.listen, Listen::Tcp("0.0.0.0:9090".parse().expect("addr")));
        assert_eq!(c.service.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.service.ring, RingConfig::default());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.limits, ConnectionLimits::default());
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.service.idle, Some(Duration::from_secs(300)));
        assert!(c.service.auth_token.is_none() && c.http_addr.is_none());
        let d = ServiceSettings::default();
        assert_eq!(
            (c.service.first_chunk_timeout, c.service.keep_ended),
            (d.first_chunk_timeout, d.keep_ended)
        );
        assert_eq!(c.service.audio_source, d.audio_source);
        assert_eq!(c.service.livekit_ffi_lib, d.livekit_ffi_lib);
        let p = PlaybackSettings::default();
        assert_eq!(
            (
                c.service.playback.connect_timeout,
                c.service.playback.read_timeout,
                c.service.playback.max_stall,
                c.service.playback.max_bytes,
                c.service.playback.max_redirects
            ),
            (
                p.connect_timeout,
                p.read_timeout,
                p.max_stall,
                p.max_bytes,
                p.max_redirects
            )
        );
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.decoder_memory_mib, 512);
    }

    #[test]
    fn the_socket_wins_over_tcp_and_the_last_flag_wins() {
        let c = run(&["--port", "7000", "--port=7001"]);
        assert_eq!(c.listen, Listen::Tcp("0.0.0.0:7001".parse().expect("addr")));
        let c = run(&["--socket", "/tmp/b.sock", "--port", "8000"]);
        assert_eq!(c.listen, Listen::Unix("/tmp/b.sock".into()));
        let c = run(&["--overflow=drop-oldest", "--log-format", "json"]);
        assert_eq!(c.service.ring.overflow, Overflow::DropOldest);
        assert_eq!(c.log_format, LogFormat::Json);
        let c = run(&["--max-cpu", "0.8", "--max-sessions", "100", "--idle-s", "0"]);
        assert_eq!(c.service.limits.max_cpu, Some(0.8));
        assert_eq!(c.service.limits.max_sessions, Some(100));
        assert_eq!(c.service.idle, None);
        let c = run(&["--audio-source", "track", "--socket", ""]);
        assert_eq!(c.service.audio_source, AudioSource::Track);
        assert_eq!(c.service.sim_rooms, SimRooms::Front);
        let c = run(&["--sim-rooms", "workers"]);
        assert_eq!(c.service.sim_rooms, SimRooms::Workers);
        assert!(
            matches!(c.listen, Listen::Tcp(_)),
            "an empty socket is unset"
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (args, key) in [
            (vec!["--port", "70000"], "--port"),
            (vec!["--port", "http"], "--port"),
            (vec!["--overflow", "drop-all"], "--overflow"),
            (vec!["--audio-source", "video"], "--audio-source"),
            (vec!["--sim-rooms", "elsewhere"], "--sim-rooms"),
            (vec!["--ring-ms", "0"], "--ring-ms"),
            (vec!["--host", "localhost:1"], "--host"),
            (vec!["--max-cpu", "2"], "--max-cpu"),
            (vec!["--nonsense"], "--nonsense"),
            (vec!["--port"], "--port"),
            (
                vec!["--playback-proxy", "socks5://p:1080"],
                "--playback-proxy",
            ),
            (vec!["--playback-proxy", "proxy:3128"], "--playback-proxy"),
            (
                vec!["--playback-proxy", "http://p:3128/x"],
                "--playback-proxy",
            ),
            (vec!["--tls-cert", "Cargo.toml"], "BRIDGE_TLS_KEY"),
        ] {
            let err = parse(&args).expect_err("must fail");
            assert!(err.names(key), "{err} should name {key}");
        }
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = parse(&[
            "--port",
            "http",
            "--ring-ms",
            "0",
            "--overflow",
            "sometimes",
            "--socket-mode",
            "0999",
            "--joins-at-once",
            "10001",
        ])
        .expect_err("must fail");
        for key in [
            "--port",
            "--ring-ms",
            "--overflow",
            "--socket-mode",
            "--joins-at-once",
        ] {
            assert!(err.names(key), "{err} should name {key}");
        }
        assert_eq!(err.0.len(), 5, "{err}");
    }

    #[test]
    fn secrets_are_never_echoed() {
        let err = parse(&["--playback-proxy", "ftp://u:hunter2@p:21"]).expect_err("must fail");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("only http and https"), "{err}");
        let c = run(&["--playback-proxy", "http://u:hunter2@proxy.internal:3128"]);
        let proxy = c.service.playback.proxy.expect("a proxy");
        assert_eq!(proxy.host_str(), Some("proxy.internal"));
        assert_eq!(proxy.password(), Some("hunter2"));
        let err = parse(&["--auth-token", "has space"]).expect_err("must fail");
        assert!(!err.to_string().contains("has space"), "{err}");
    }

    #[test]
    fn help_lists_every_setting_with_its_environment_variable_and_default() {
        assert!(matches!(parse(&["--help"]), Ok(Command::Help(_))));
        let text = help();
        let all = settings();
        assert_eq!(all.len(), 37, "every setting has a flag and a variable");
        for s in &all {
            assert!(text.contains(&s.flag) && text.contains(&s.env), "{}", s.env);
            assert!(!s.help.is_empty(), "{} has no help", s.env);
        }
        let mode = all.iter().find(|s| s.env == "LIVEKIT_GRPC_SOCKET_MODE");
        assert_eq!(mode.map(|s| s.default.as_str()), Some("0666"));
    }
}
