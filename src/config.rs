//! Settings from command-line flags and the environment (flags win). Every setting is in
//! [`SETTINGS`]: clap (with its `env` feature) reads each as a flag or its environment variable
//! and writes `--help` from it; [`Config::parse`] then checks and types the values, and a bad
//! one is a [`ConfigError`] naming it (the binary exits 64).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::playback::PlaybackSettings;
use crate::playback::egress::EgressPolicy;
use reqwest::Url;

use crate::audio::{Overflow, RingConfig};
use crate::listener::ConnectionLimits;
pub use crate::logging::LogFormat;
use crate::room::AudioSource;
use crate::service::admission::Limits;
use crate::service::{ServiceSettings, TlsPem};

/// One setting: its flag, its environment variable, its default and what it does.
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        flag: "--socket",
        env: "LIVEKIT_GRPC_SOCKET",
        default: "",
        help: "Unix socket path to serve on (stale file removed, directory created, mode 0666). \
               When set, TCP is not used.",
    },
    Setting {
        flag: "--socket-mode",
        env: "LIVEKIT_GRPC_SOCKET_MODE",
        default: "0666",
        help: "File mode of the Unix socket, in octal (0660 with a shared group keeps other \
               users out).",
    },
    Setting {
        flag: "--auth-token",
        env: "BRIDGE_AUTH_TOKEN",
        default: "",
        help: "When set, every RPC (health and reflection included) must carry \
               'authorization: Bearer <token>', else UNAUTHENTICATED. Off when empty.",
    },
    Setting {
        flag: "--tls-cert",
        env: "BRIDGE_TLS_CERT",
        default: "",
        help: "PEM certificate chain for TLS on the TCP listener (with --tls-key). Off when \
               empty; not for the Unix socket.",
    },
    Setting {
        flag: "--tls-key",
        env: "BRIDGE_TLS_KEY",
        default: "",
        help: "PEM private key of --tls-cert.",
    },
    Setting {
        flag: "--port",
        env: "PORT",
        default: "9090",
        help: "TCP port to serve on when no socket is set.",
    },
    Setting {
        flag: "--host",
        env: "BRIDGE_HOST",
        default: "0.0.0.0",
        help: "Address to bind the TCP port on.",
    },
    Setting {
        flag: "--max-connections",
        env: "BRIDGE_MAX_CONNECTIONS",
        default: "1024",
        help: "Client connections open at once; one more is closed as soon as it is accepted.",
    },
    Setting {
        flag: "--handshake-timeout-ms",
        env: "BRIDGE_HANDSHAKE_TIMEOUT_MS",
        default: "5000",
        help: "A new connection that has not started HTTP/2 within this long is closed.",
    },
    Setting {
        flag: "--connect-timeout-ms",
        env: "BRIDGE_CONNECT_TIMEOUT_MS",
        default: "10000",
        help: "How long JoinRoom waits for a room to connect before answering success: false.",
    },
    Setting {
        flag: "--audio-source",
        env: "BRIDGE_AUDIO_SOURCE",
        default: "both",
        help: "Where the target's audio comes from: data (its data packets of 16 kHz PCM16), \
               track (its published microphone track, subscribed to and decoded to 16 kHz) or \
               both (data packets win while they flow; the track fills in when they stop).",
    },
    Setting {
        flag: "--ring-ms",
        env: "BRIDGE_RING_MS",
        default: "2000",
        help: "Room audio buffered per session (ms of 10 ms frames) for a slow reader.",
    },
    Setting {
        flag: "--overflow",
        env: "BRIDGE_OVERFLOW",
        default: "drop-newest",
        help: "When a session's buffer is full: drop-newest (keep what is queued) or \
               drop-oldest (also skip the stale half, back to live audio).",
    },
    Setting {
        flag: "--first-chunk-timeout-ms",
        env: "BRIDGE_FIRST_CHUNK_TIMEOUT_MS",
        default: "10000",
        help: "How long StreamAudio waits for the first chunk, which names the session.",
    },
    Setting {
        flag: "--keep-ended-s",
        env: "BRIDGE_KEEP_ENDED_S",
        default: "600",
        help: "How long GetStatus keeps reporting a session whose room was lost.",
    },
    Setting {
        flag: "--http-addr",
        env: "BRIDGE_HTTP_ADDR",
        default: "",
        help: "Address (IP:port) of the operators' HTTP listener: /metrics (Prometheus), /livez, \
               /readyz, /availability. Off when empty.",
    },
    Setting {
        flag: "--max-sessions",
        env: "BRIDGE_MAX_SESSIONS",
        default: "0",
        help: "Sessions held at once; a JoinRoom for one more is refused at once (success: false, \
               'bridge at capacity'). 0: no limit.",
    },
    Setting {
        flag: "--max-cpu",
        env: "BRIDGE_MAX_CPU",
        default: "0",
        help: "The machine's CPU use (a fraction of all its cores, over the last 3 s) beyond which \
               a JoinRoom is refused at once. 0: no limit.",
    },
    Setting {
        flag: "--idle-s",
        env: "BRIDGE_IDLE_S",
        default: "300",
        help: "A session with no StreamAudio attached for this long is closed as idle (the \
               backend went away without LeaveRoom). 0: never.",
    },
    Setting {
        flag: "--livekit-ffi-lib",
        env: "LIVEKIT_FFI_LIB",
        default: "vendor/livekit-ffi/liblivekit_ffi.so",
        help: "LiveKit's SDK library (liblivekit_ffi.so 1.2.1), needed for ws:// and wss:// \
               rooms; scripts/fetch-livekit-ffi puts it at the default path.",
    },
    Setting {
        flag: "--playback-connect-timeout-ms",
        env: "PLAYBACK_CONNECT_TIMEOUT_MS",
        default: "5000",
        help: "PlayAudio: how long connecting to the audio URL's server may take.",
    },
    Setting {
        flag: "--playback-read-timeout-ms",
        env: "PLAYBACK_READ_TIMEOUT_MS",
        default: "10000",
        help: "PlayAudio: the longest the audio server may go without sending a byte.",
    },
    Setting {
        flag: "--playback-max-stall-ms",
        env: "PLAYBACK_MAX_STALL_MS",
        default: "5000",
        help: "PlayAudio: how far playout may fall behind waiting for the download (and how long \
               the first audio may take after the response headers) before it fails as too slow.",
    },
    Setting {
        flag: "--playback-decoder-memory-mb",
        env: "PLAYBACK_DECODER_MEMORY_MB",
        default: "512",
        help: "PlayAudio: the address space (MiB) of the child process that decodes each \
               playback; a file that needs more fails its playback and nothing else.",
    },
    Setting {
        flag: "--playback-max-bytes",
        env: "PLAYBACK_MAX_BYTES",
        default: "52428800",
        help: "PlayAudio: the largest audio file accepted, in bytes.",
    },
    Setting {
        flag: "--playback-max-redirects",
        env: "PLAYBACK_MAX_REDIRECTS",
        default: "5",
        help: "PlayAudio: HTTP redirects followed before giving up.",
    },
    Setting {
        flag: "--playback-ca-file",
        env: "PLAYBACK_CA_FILE",
        default: "",
        help: "PlayAudio: a PEM file of extra root certificates to trust for https URLs \
               (an internal CA), besides the built-in web roots.",
    },
    Setting {
        flag: "--playback-allow-hosts",
        env: "PLAYBACK_ALLOW_HOSTS",
        default: "",
        help: "PlayAudio: host names (comma-separated; *.example.com for every name under it) \
               that may be fetched whatever they resolve to. By default only public internet \
               addresses are fetched: never loopback, private, link-local (cloud metadata), \
               unique-local, multicast or reserved ones.",
    },
    Setting {
        flag: "--playback-allow-nets",
        env: "PLAYBACK_ALLOW_NETS",
        default: "",
        help: "PlayAudio: networks (comma-separated CIDRs, e.g. 10.20.0.0/16) that may be \
               fetched from besides the public internet.",
    },
    Setting {
        flag: "--playback-proxy",
        env: "PLAYBACK_PROXY",
        default: "",
        help: "PlayAudio: fetch every URL through this HTTP proxy, e.g. \
               http://user:password@proxy.internal:3128 (CONNECT for https URLs). The proxy \
               then resolves names and its access list governs them; the bridge still refuses \
               non-public IP literals on every hop.",
    },
    Setting {
        flag: "--shutdown-timeout-ms",
        env: "BRIDGE_SHUTDOWN_TIMEOUT_MS",
        default: "5000",
        help: "On SIGTERM or SIGINT, the deadline for ending streams and closing sessions.",
    },
    Setting {
        flag: "--log-format",
        env: "LOG_FORMAT",
        default: "text",
        help: "Log format: text or json.",
    },
    Setting {
        flag: "--log",
        env: "RUST_LOG",
        default: "info",
        help: "Log filter, in tracing's EnvFilter syntax.",
    },
];

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
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// The command line: clap parses flags and their environment fallbacks (flags win) and
/// writes `--help`; every setting comes from [`SETTINGS`] ([`Settings`]), and [`Config::parse`]
/// checks and types the values.
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

/// The raw value of every setting given, by flag, as clap found it (flag or environment).
#[derive(Debug, Default)]
pub struct Settings(std::collections::HashMap<&'static str, String>);

impl clap::Args for Settings {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SETTINGS.iter().fold(cmd, |cmd, s| {
            let mut arg = clap::Arg::new(s.flag)
                .long(&s.flag[2..])
                .env(s.env)
                .value_name(s.env)
                .help(s.help)
                // --help must not print a token or path found in the environment.
                .hide_env_values(true)
                // A flag given twice: the last wins, as with the environment it overrides.
                .overrides_with(s.flag)
                .action(clap::ArgAction::Set);
            if !s.default.is_empty() {
                arg = arg.default_value(s.default);
            }
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Settings {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(
            SETTINGS
                .iter()
                .filter_map(|s| m.get_one::<String>(s.flag).map(|v| (s.flag, v.clone())))
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// A clap error as the setting it is about: `ENV (--flag)` and clap's one-line reason.
fn config_error(e: &clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(a)) => a.clone(),
        _ => String::new(),
    };
    let long = arg.trim_start_matches("--").split([' ', '=']).next();
    let key = SETTINGS
        .iter()
        .find(|s| Some(&s.flag[2..]) == long)
        .map_or_else(
            || {
                if arg.is_empty() {
                    "arguments".into()
                } else {
                    arg.clone()
                }
            },
            |s| format!("{} ({})", s.env, s.flag),
        );
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
    pub fn parse(args: &[String]) -> Result<Command, ConfigError> {
        use clap::CommandFactory;
        Self::parse_with(Cli::command(), args)
    }

    /// Parses `args` with `command` (the tests' has no environment fallbacks).
    fn parse_with(command: clap::Command, args: &[String]) -> Result<Command, ConfigError> {
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
                    _ => Err(config_error(&e)),
                };
            }
        };
        if let Some(Subcommand::Ctl(ctl)) = cli.command {
            return Ok(Command::Ctl(Box::new(ctl)));
        }
        let given = cli.settings.0;
        let get = |flag: &str| -> (&'static Setting, String) {
            let setting = SETTINGS
                .iter()
                .find(|s| s.flag == flag)
                .expect("flag is in SETTINGS");
            let value = given
                .get(flag)
                .cloned()
                .unwrap_or_else(|| setting.default.to_string());
            (setting, value)
        };
        let ms = |flag: &str, lo: u64, hi: u64| -> Result<Duration, ConfigError> {
            number(get(flag), lo, hi).map(Duration::from_millis)
        };

        let (_, socket) = get("--socket");
        let listen = if socket.is_empty() {
            let port = number(get("--port"), 0, 65_535)? as u16;
            let (host_setting, host) = get("--host");
            let ip: IpAddr = host
                .parse()
                .map_err(|_| invalid(host_setting, &host, "an IP address"))?;
            Listen::Tcp(SocketAddr::new(ip, port))
        } else {
            Listen::Unix(PathBuf::from(socket))
        };
        let (overflow_setting, overflow) = get("--overflow");
        let overflow = match overflow.as_str() {
            "drop-newest" => Overflow::DropNewest,
            "drop-oldest" => Overflow::DropOldest,
            _ => {
                return Err(invalid(
                    overflow_setting,
                    &overflow,
                    "drop-newest or drop-oldest",
                ));
            }
        };
        let (source_setting, source) = get("--audio-source");
        let audio_source = match source.as_str() {
            "data" => AudioSource::Data,
            "track" => AudioSource::Track,
            "both" => AudioSource::Both,
            _ => return Err(invalid(source_setting, &source, "data, track or both")),
        };
        let (format_setting, format) = get("--log-format");
        let log_format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid(format_setting, &format, "text or json")),
        };
        let ring_ms = number(get("--ring-ms"), 10, 60_000)? as u32;
        let (cpu_setting, cpu) = get("--max-cpu");
        let max_cpu = match cpu.trim().parse::<f64>() {
            Ok(0.0) => None,
            Ok(f) if f > 0.0 && f <= 1.0 => Some(f),
            _ => {
                return Err(invalid(
                    cpu_setting,
                    &cpu,
                    "a fraction of the machine's cores in 0..=1 (0: no limit)",
                ));
            }
        };
        let (token_setting, token) = get("--auth-token");
        let auth_token = match token.as_str() {
            "" => None,
            t if t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_graphic()) => Some(t.to_string()),
            _ => {
                return Err(invalid(
                    token_setting,
                    "<redacted>",
                    "1 to 4096 visible ASCII characters (no spaces)",
                ));
            }
        };
        let (mode_setting, mode) = get("--socket-mode");
        let socket_mode = u32::from_str_radix(mode.trim(), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| invalid(mode_setting, &mode, "an octal file mode, e.g. 0660"))?;
        let (hosts_setting, hosts) = get("--playback-allow-hosts");
        let (nets_setting, nets) = get("--playback-allow-nets");
        let egress = EgressPolicy::parse(&hosts, &nets).map_err(|why| ConfigError {
            key: format!("{} ({})", nets_setting.env, nets_setting.flag),
            message: why,
        })?;
        if hosts.split(',').any(|h| h.trim().contains(['/', ' ', ':'])) {
            return Err(invalid(
                hosts_setting,
                &hosts,
                "host names, comma-separated",
            ));
        }
        let proxy = proxy_url(get("--playback-proxy"))?;
        let tls = tls_files(get("--tls-cert"), get("--tls-key"))?;
        if tls.is_some() && matches!(listen, Listen::Unix(_)) {
            return Err(ConfigError {
                key: "BRIDGE_TLS_CERT (--tls-cert)".into(),
                message: "TLS is for the TCP listener; a Unix socket (LIVEKIT_GRPC_SOCKET) is \
                          protected by its file mode"
                    .into(),
            });
        }
        let (http_setting, http) = get("--http-addr");
        let http_addr = match http.trim() {
            "" => None,
            text => Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| invalid(http_setting, &http, "IP:port, e.g. 127.0.0.1:9091"))?,
            ),
        };
        Ok(Command::Run(Box::new(Config {
            listen,
            limits: ConnectionLimits {
                max_connections: number(get("--max-connections"), 1, 1_000_000)? as usize,
                handshake_timeout: ms("--handshake-timeout-ms", 100, 600_000)?,
            },
            service: ServiceSettings {
                connect_timeout: ms("--connect-timeout-ms", 1, 600_000)?,
                audio_source,
                ring: RingConfig::for_duration_ms(ring_ms, overflow),
                first_chunk_timeout: ms("--first-chunk-timeout-ms", 1, 600_000)?,
                keep_ended: Duration::from_secs(number(get("--keep-ended-s"), 0, 86_400)?),
                playback: PlaybackSettings {
                    connect_timeout: ms("--playback-connect-timeout-ms", 1, 600_000)?,
                    read_timeout: ms("--playback-read-timeout-ms", 1, 600_000)?,
                    max_stall: ms("--playback-max-stall-ms", 100, 600_000)?,
                    max_bytes: number(get("--playback-max-bytes"), 1, 1 << 40)?,
                    max_redirects: number(get("--playback-max-redirects"), 0, 50)? as usize,
                    egress,
                    proxy,
                    ca_file: Some(get("--playback-ca-file").1)
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from),
                    ..PlaybackSettings::default()
                },
                livekit_ffi_lib: PathBuf::from(get("--livekit-ffi-lib").1),
                limits: Limits {
                    max_sessions: Some(number(get("--max-sessions"), 0, 10_000_000)? as usize)
                        .filter(|n| *n > 0),
                    max_cpu,
                },
                idle: Some(Duration::from_secs(number(get("--idle-s"), 0, 604_800)?))
                    .filter(|d| !d.is_zero()),
                auth_token,
                tls,
            },
            socket_mode,
            http_addr,
            shutdown_timeout: ms("--shutdown-timeout-ms", 0, 600_000)?,
            decoder_memory_mib: number(get("--playback-decoder-memory-mb"), 64, 65_536)?,
            log_format,
            log_filter: get("--log").1,
        })))
    }
}

/// The PlayAudio proxy: an http:// or https:// URL naming a host, and nothing past the port.
/// The value is never echoed whole, since it may carry the proxy's password.
fn proxy_url((setting, value): (&'static Setting, String)) -> Result<Option<Url>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| ConfigError {
        key: format!("{} ({})", setting.env, setting.flag),
        message: format!("{why}; expected a proxy URL such as http://proxy.internal:3128"),
    };
    let url = Url::parse(value.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
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
    Ok(Some(url))
}

/// The TLS certificate chain and key, both or neither, each read and parsed as PEM.
fn tls_files(
    (cert_setting, cert): (&'static Setting, String),
    (key_setting, key): (&'static Setting, String),
) -> Result<Option<TlsPem>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |setting: &Setting, message: String| ConfigError {
        key: format!("{} ({})", setting.env, setting.flag),
        message,
    };
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => return Ok(None),
        (false, true) => return Err(fail(key_setting, "needed with BRIDGE_TLS_CERT".into())),
        (true, false) => return Err(fail(cert_setting, "needed with BRIDGE_TLS_KEY".into())),
        (false, false) => {}
    }
    let read = |setting: &Setting, path: &str| {
        std::fs::read(path).map_err(|e| fail(setting, format!("cannot read {path}: {e}")))
    };
    let (cert_pem, key_pem) = (read(cert_setting, &cert)?, read(key_setting, &key)?);
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(cert_setting, format!("{cert}: {e}")))?;
    if certs.is_empty() {
        return Err(fail(cert_setting, format!("no PEM certificate in {cert}")));
    }
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| fail(key_setting, format!("no PEM private key in {key}: {e}")))?;
    Ok(Some(TlsPem {
        cert: cert_pem,
        key: key_pem,
    }))
}

fn invalid(setting: &Setting, value: &str, expected: &str) -> ConfigError {
    ConfigError {
        key: format!("{} ({})", setting.env, setting.flag),
        message: format!("{value:?} is not valid; expected {expected}"),
    }
}

fn number(
    (setting, value): (&'static Setting, String),
    lo: u64,
    hi: u64,
) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| invalid(setting, &value, &format!("an integer in {lo}..={hi}")))
}

/// The `--help` text (clap's, from [`SETTINGS`]).
pub fn help() -> String {
    use clap::CommandFactory;
    Cli::command().render_help().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses flags only: the tests must not depend on the process environment.
    fn parse(args: &[&str]) -> Result<Command, ConfigError> {
        use clap::CommandFactory;
        let command = Cli::command().mut_args(|a| a.env(None::<&str>));
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
    fn defaults_match_the_old_service() {
        let c = run(&[]);
        assert_eq!(c.listen, Listen::Tcp("0.0.0.0:9090".parse().expect("addr")));
        assert_eq!(c.service.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.service.ring, RingConfig::default());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.limits, ConnectionLimits::default());
        assert_eq!(c.socket_mode, 0o666);
        assert_eq!(c.service.idle, Some(Duration::from_secs(300)));
        assert!(c.service.auth_token.is_none() && c.http_addr.is_none());
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
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (args, key) in [
            (vec!["--port", "70000"], "PORT"),
            (vec!["--port", "http"], "PORT"),
            (vec!["--overflow", "drop-all"], "BRIDGE_OVERFLOW"),
            (vec!["--audio-source", "video"], "BRIDGE_AUDIO_SOURCE"),
            (vec!["--ring-ms", "0"], "BRIDGE_RING_MS"),
            (vec!["--host", "localhost:1"], "BRIDGE_HOST"),
            (vec!["--max-cpu", "2"], "BRIDGE_MAX_CPU"),
            (vec!["--nonsense"], "--nonsense"),
            (vec!["--port"], "--port"),
            (
                vec!["--playback-proxy", "socks5://p:1080"],
                "PLAYBACK_PROXY",
            ),
            (vec!["--playback-proxy", "proxy:3128"], "PLAYBACK_PROXY"),
            (
                vec!["--playback-proxy", "http://p:3128/x"],
                "PLAYBACK_PROXY",
            ),
        ] {
            let err = parse(&args).expect_err("must fail");
            assert!(err.key.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn the_proxy_password_is_never_echoed() {
        let err = parse(&["--playback-proxy", "ftp://u:hunter2@p:21"]).expect_err("must fail");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("only http and https"), "{err}");
        let c = run(&["--playback-proxy", "http://u:hunter2@proxy.internal:3128"]);
        let proxy = c.service.playback.proxy.expect("a proxy");
        assert_eq!(proxy.host_str(), Some("proxy.internal"));
        assert_eq!(proxy.password(), Some("hunter2"));
    }

    #[test]
    fn help_lists_every_setting_with_its_environment_variable() {
        assert!(matches!(parse(&["--help"]), Ok(Command::Help(_))));
        let text = help();
        for s in SETTINGS {
            assert!(text.contains(s.flag) && text.contains(s.env), "{}", s.env);
        }
    }
}
