//! `livekit-bridge`: parse settings, set up logging, bind, serve until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use livekit_bridge::config::{Command, Config, Listen};
use livekit_bridge::listener::{self, OwnedSocket};
use livekit_bridge::logging;
use livekit_bridge::playback::worker::{self, DecoderProcess};
use livekit_bridge::room::worker as room_worker;
use livekit_bridge::server;
use livekit_bridge::service::BridgeState;
use tokio::net::TcpListener;

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;
/// How long past the drain deadline the process may live before it is ended regardless.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(worker::SUBCOMMAND) {
        return ExitCode::from(worker::serve(&args[1..]));
    }
    if args.first().map(String::as_str) == Some(room_worker::SUBCOMMAND) {
        return ExitCode::from(room_worker::serve::serve(&args[1..]));
    }
    let mut config = match Config::parse(&args) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Ctl(ctl)) => return run_ctl(*ctl),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("livekit-bridge: invalid configuration: {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Each playback decodes in a child: this binary, run as `decode-worker`.
    match std::env::current_exe() {
        Ok(exe) => {
            config.service.playback.decoder_process = Some(DecoderProcess {
                exe,
                memory_mib: config.decoder_memory_mib,
            });
        }
        Err(e) => {
            eprintln!("livekit-bridge: cannot find its own binary to decode audio in: {e}");
            return ExitCode::FAILURE;
        }
    }
    // PlayAudio's HTTP client comes from settings (PLAYBACK_CA_FILE): refuse to start with one
    // that cannot be built rather than fail every PlayAudio later.
    let state = match BridgeState::new(config.service.clone()) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("livekit-bridge: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = logging::init(config.log_format, &config.log_filter) {
        eprintln!("livekit-bridge: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Named, so a per-thread profile (/proc/<pid>/task/*/comm) tells the bridge's workers from
    // the tokio workers of LiveKit's library in the same process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bridge-worker")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("livekit-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(config, state));
    // Whatever is still running (a room still connecting, a download) is abandoned, not
    // waited for: the drain deadline has been spent already.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `livekit-bridge ctl ...`: the operator's client, on a runtime of its own.
fn run_ctl(ctl: livekit_bridge::ctl::Ctl) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("livekit-bridge ctl: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(livekit_bridge::ctl::run(ctl, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("livekit-bridge ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn serve(config: Config, state: Arc<BridgeState>) -> anyhow::Result<()> {
    let grace = config.shutdown_timeout;
    if let Some(addr) = config.http_addr {
        let http = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the HTTP listener {addr} (BRIDGE_HTTP_ADDR)"))?;
        tracing::info!(addr = %http.local_addr()?, "serving metrics and probes over HTTP");
        tokio::spawn(livekit_bridge::http::serve(http, state.clone()));
    }
    match &config.listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind TCP {addr} (PORT, BRIDGE_HOST)"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving on TCP");
            let incoming = listener::incoming(listener, config.limits);
            server::run(state, incoming, shutdown_signal(grace, None), grace).await?;
        }
        Listen::Unix(path) => {
            let (unix, socket) = OwnedSocket::bind(path, config.socket_mode)?;
            tracing::info!(path = %path.display(), "serving on Unix socket");
            let incoming = listener::incoming(unix, config.limits);
            let stop = shutdown_signal(grace, Some(socket.clone()));
            let served = server::run(state, incoming, stop, grace).await;
            socket.remove();
            served?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT, and arms the drain's last resort: if the process is still
/// alive a second after the drain deadline (a runtime too busy to finish in time), a plain
/// thread removes the socket file, if still ours, and exits.
async fn shutdown_signal(grace: Duration, socket: Option<OwnedSocket>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop the bridge");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    let armed = std::thread::Builder::new()
        .name("drain-deadline".into())
        .spawn(move || {
            std::thread::sleep(grace + DEADLINE_MARGIN);
            tracing::error!(?grace, "the drain overran its deadline; exiting now");
            if let Some(socket) = socket {
                socket.remove();
            }
            std::process::exit(1);
        });
    if let Err(e) = armed {
        tracing::warn!(error = %e, "cannot arm the drain deadline's last resort");
    }
}
