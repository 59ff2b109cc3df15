//! Driving the release binary as a process: one builder for every way a test starts it (Unix
//! socket or TCP, HTTP listener, a wrapper such as `prlimit`, stderr inherited or in a file),
//! waiting for it, signalling it, timing its exit, and running `ctl` against it.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_livekit-bridge");

/// Polls `cond` every 10 ms for up to 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP port on loopback that nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn sigterm(child: &Child) {
    kill(child.id(), "TERM");
}

/// Sends the signal `name` (`TERM`, `KILL`, `SEGV`, ...) to `pid`.
pub fn kill(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid}");
}

/// Waits for the process to exit; its status and how long it took. Kills it and fails the
/// test after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the bridge did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where the bridge serves gRPC.
enum Listen {
    Socket(PathBuf),
    Tcp(u16),
}

/// How to start the release bridge. By default: a clean environment plus `RUST_LOG=warn`,
/// stdout discarded, stderr inherited (so a failing test shows the bridge's log).
pub struct Launch {
    listen: Listen,
    http: Option<u16>,
    env: Vec<(String, String)>,
    inherit_env: bool,
    wrapper: Vec<String>,
    binary: PathBuf,
    log: Option<PathBuf>,
}

impl Launch {
    /// Served on the Unix socket `socket` (`LIVEKIT_GRPC_SOCKET`).
    pub fn on_socket(socket: &Path) -> Self {
        Self::new(Listen::Socket(socket.to_path_buf()))
    }

    /// Served on a free TCP port on loopback (`PORT`, `BRIDGE_HOST`).
    pub fn on_tcp() -> Self {
        Self::new(Listen::Tcp(free_port()))
    }

    fn new(listen: Listen) -> Self {
        Self {
            listen,
            http: None,
            env: vec![("RUST_LOG".into(), "warn".into())],
            inherit_env: false,
            wrapper: Vec::new(),
            binary: PathBuf::from(BIN),
            log: None,
        }
    }

    /// With the HTTP listener (`BRIDGE_HTTP_ADDR`) on a free port on loopback.
    pub fn with_http(mut self) -> Self {
        self.http = Some(free_port());
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        let value = value.as_ref().to_string_lossy().into_owned();
        self.env.push((key.into(), value));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Self {
        env.iter().fold(self, |l, (k, v)| l.env(k, v))
    }

    /// Keeps the caller's environment (the load generator passes its own through).
    pub fn inherit_env(mut self) -> Self {
        self.inherit_env = true;
        self
    }

    /// Runs the bridge under `wrapper` (for example `prlimit --nofile=128 --`).
    pub fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs a copy of the binary at `path` (for a user who cannot reach `target/`).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = path.to_path_buf();
        self
    }

    /// Writes stderr to `file` instead of inheriting it, for tests that read the log.
    pub fn log_to(mut self, file: &Path) -> Self {
        self.log = Some(file.to_path_buf());
        self
    }

    /// Starts the process without waiting for it to listen.
    pub fn spawn(self) -> BridgeProcess {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        if !self.inherit_env {
            cmd.env_clear();
        }
        let (socket, tcp) = match &self.listen {
            Listen::Socket(path) => {
                cmd.env("LIVEKIT_GRPC_SOCKET", path);
                (Some(path.clone()), None)
            }
            Listen::Tcp(port) => {
                cmd.env("PORT", port.to_string())
                    .env("BRIDGE_HOST", "127.0.0.1");
                (None, Some(SocketAddr::from(([127, 0, 0, 1], *port))))
            }
        };
        let http = self.http.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        if let Some(addr) = http {
            cmd.env("BRIDGE_HTTP_ADDR", addr.to_string());
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null());
        match &self.log {
            Some(file) => cmd.stderr(std::fs::File::create(file).expect("the log file")),
            None => cmd.stderr(Stdio::inherit()),
        };
        BridgeProcess {
            child: cmd.spawn().expect("start the bridge"),
            socket,
            tcp,
            http,
            log: self.log,
        }
    }

    /// Starts the process and returns once every listener it was given accepts; fails the
    /// test at once if the bridge exits first (a bad setting exits 64 and says why on stderr).
    pub fn start(self) -> BridgeProcess {
        let mut bridge = self.spawn();
        wait_for("the bridge's listeners", || {
            if let Some(status) = bridge.child.try_wait().expect("try_wait") {
                panic!(
                    "the bridge exited before it listened: {status}\n{}",
                    bridge.log()
                );
            }
            bridge.listening()
        });
        bridge
    }
}

/// The running bridge; killed when dropped, so a failing test leaves no bridge behind (one
/// holding the test's stderr would keep `cargo test`'s output open).
pub struct BridgeProcess {
    pub child: Child,
    pub socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    log: Option<PathBuf>,
}

impl BridgeProcess {
    /// Whether every listener accepts a connection.
    pub fn listening(&self) -> bool {
        self.socket
            .as_ref()
            .is_none_or(|s| UnixStream::connect(s).is_ok())
            && self.tcp.is_none_or(|a| TcpStream::connect(a).is_ok())
            && self.http.is_none_or(|a| TcpStream::connect(a).is_ok())
    }

    /// The Unix socket it serves on.
    pub fn socket(&self) -> &Path {
        self.socket.as_deref().expect("started on a Unix socket")
    }

    /// `host:port` of its gRPC listener on TCP.
    pub fn tcp(&self) -> String {
        self.tcp.expect("started on TCP").to_string()
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// What it wrote to its log file so far (empty when stderr is inherited).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default()
    }

    pub fn sigterm(&self) {
        sigterm(&self.child);
    }

    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        wait_exit(&mut self.child, limit)
    }

    /// SIGTERM, then the exit status and how long it took (at most `limit`).
    pub fn stop_within(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        self.sigterm();
        self.wait_exit(limit)
    }

    /// SIGTERM; fails the test unless it exits 0 within 10 s.
    pub fn stop(mut self) {
        let (status, _) = self.stop_within(Duration::from_secs(10));
        assert!(status.success(), "the bridge exited with {status:?}");
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `livekit-bridge ctl` against the bridge on `socket`, with the token if given.
pub fn ctl(socket: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.env_clear()
        .arg("ctl")
        .arg("--addr")
        .arg(format!("unix:{}", socket.display()));
    if let Some(t) = token {
        c.args(["--token", t]);
    }
    c.args(args).output().expect("run ctl")
}

/// The standard output of a `ctl` run that must have succeeded.
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh, empty scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livekit-bridge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}
