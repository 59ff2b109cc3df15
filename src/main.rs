//! `livekit-bridge`: parse settings, set up logging, bind, serve until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use livekit_bridge::config::{self, Command, Config, Listen, LogFormat};
use livekit_bridge::playback::fetch::Fetcher;
use livekit_bridge::server;
use livekit_bridge::service::BridgeState;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::parse(&args, &|key| std::env::var(key).ok()) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("livekit-bridge: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // PlayAudio's HTTP client comes from settings (PLAYBACK_CA_FILE): refuse to start with one
    // that cannot be built rather than fail every PlayAudio later.
    if let Err(e) = Fetcher::new(config.service.playback.clone()) {
        eprintln!("livekit-bridge: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("livekit-bridge: invalid configuration: RUST_LOG (--log): {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("livekit-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!(e))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let state = BridgeState::new(config.service.clone());
    let grace = config.shutdown_timeout;
    match &config.listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind TCP {addr} (PORT, BRIDGE_HOST)"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving on TCP");
            let incoming = server::tcp_incoming(listener);
            server::run(state, incoming, shutdown_signal(), grace).await?;
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(path = %path.display(), "serving on Unix socket");
            let served = server::run(
                state,
                UnixListenerStream::new(listener),
                shutdown_signal(),
                grace,
            )
            .await;
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the socket file");
            }
            served?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds a Unix socket as the old service did: stale file removed, directory created, 0666.
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} (LIVEKIT_GRPC_SOCKET)", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stale socket file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove stale {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind {} (LIVEKIT_GRPC_SOCKET)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop the bridge");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
