//! PlayAudio through an HTTP proxy (`PLAYBACK_PROXY`), against the release binary, Debian's
//! tinyproxy with basic authentication, and `ctl play`: an https URL goes through a CONNECT
//! tunnel and an http URL is forwarded, both playing whole; a non-public IP literal is still
//! refused by the bridge before the proxy hears of it; wrong proxy credentials and an
//! unreachable proxy fail with messages that name the proxy and never its password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

use common::http::{HttpServer, Route};
use common::process::{BIN, BridgeProcess, Launch, ctl, free_port, ok, scratch, wait_for};

const USER: &str = "bridge";
const PASSWORD: &str = "proxy-s3cret";

/// Debian's tinyproxy on a loopback port, in the foreground, requiring basic authentication.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        // No ConnectPort line: CONNECT is allowed to any port (the test servers' are random).
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 16\n\
                 LogFile \"{}\"\nLogLevel Info\nBasicAuth {USER} {PASSWORD}\n",
                log.display()
            ),
        )
        .expect("write the proxy's configuration");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy (scripts/setup installs it)");
        wait_for("tinyproxy", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port, log }
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bridge on `dir/bridge.sock` with `env`.
fn start_on_socket(dir: &Path, env: &[(&str, &str)]) -> (BridgeProcess, PathBuf) {
    let socket = dir.join("bridge.sock");
    (Launch::on_socket(&socket).envs(env).start(), socket)
}

fn play(socket: &Path, url: &str) -> std::process::Output {
    ctl(socket, None, &["play", "u", url])
}

fn failure(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "the bridge said no");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tinyproxy (scripts/setup); scripts/test runs it"]
async fn playback_goes_through_the_proxy_and_its_faults_are_named() {
    let dir = scratch("proxy");
    let (ca, cert, key) = common::files::test_pki();
    let ca = ca.to_str().expect("path").to_string();
    let tone = common::files::sine("proxy.wav", 16_000, 1, 0.5, &["-b", "16"]);
    let route = || Route::File {
        body: tone.clone(),
        content_type: "audio/wav".into(),
    };
    let https = HttpServer::start_tls(&cert, &key).await;
    https.route("/tone.wav", route());
    let http = HttpServer::start().await;
    http.route("/tone.wav", route());
    let by_name = |server: &HttpServer, scheme: &str| {
        format!("{scheme}://localhost:{}/tone.wav", server.addr.port())
    };

    let proxy = Tinyproxy::start(&dir);
    let good = proxy.url(USER, PASSWORD);
    let bridge_dir = dir.join("good");
    std::fs::create_dir_all(&bridge_dir).expect("mkdir");
    let (bridge, socket) = start_on_socket(
        &bridge_dir,
        &[("PLAYBACK_PROXY", &good), ("PLAYBACK_CA_FILE", &ca)],
    );
    ok(&ctl(&socket, None, &["join", "u", "sim://echo", "x"]));

    // https: a CONNECT tunnel to localhost, resolved by the proxy, with TLS end to end.
    let played = ok(&play(&socket, &by_name(&https, "https")));
    assert!(played.contains("completed: 500 ms"), "{played}");
    // http: forwarded by the proxy.
    let played = ok(&play(&socket, &by_name(&http, "http")));
    assert!(played.contains("completed: 500 ms"), "{played}");
    assert_eq!((https.requests(), http.requests()), (1, 1));
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT localhost:{}", https.addr.port())),
        "the proxy tunnelled the https fetch:\n{log}"
    );
    assert!(
        log.contains(&format!("localhost:{}", http.addr.port())),
        "the proxy forwarded the http fetch:\n{log}"
    );

    // A loopback literal is the bridge's to refuse: the proxy never hears of it.
    let before = proxy.log().len();
    let refused = failure(&play(&socket, &http.url("/tone.wav")));
    assert!(
        refused.contains("refused by the egress policy"),
        "{refused}"
    );
    assert_eq!(
        proxy.log().len(),
        before,
        "the proxy was asked for a refused URL"
    );
    assert_eq!(http.requests(), 1);
    bridge.stop();

    // Wrong credentials: tinyproxy refuses the tunnel (with a 401 rather than a 407, so the
    // client cannot tell why), and the message says where to look.
    let wrong_dir = dir.join("wrong");
    std::fs::create_dir_all(&wrong_dir).expect("mkdir");
    let (bridge, socket) = start_on_socket(
        &wrong_dir,
        &[
            ("PLAYBACK_PROXY", &proxy.url(USER, "not-it")),
            ("PLAYBACK_CA_FILE", &ca),
        ],
    );
    ok(&ctl(&socket, None, &["join", "u", "sim://echo", "x"]));
    let denied = failure(&play(&socket, &by_name(&https, "https")));
    assert!(
        denied.contains("the proxy would not open a tunnel")
            && denied.contains("check the credentials in PLAYBACK_PROXY")
            && denied.contains(&format!("PLAYBACK_PROXY 127.0.0.1:{}", proxy.port)),
        "{denied}"
    );
    assert!(!denied.contains("not-it"), "the password leaked: {denied}");
    assert_eq!(https.requests(), 1);
    bridge.stop();

    // No proxy listening: the message names the proxy, not the audio's server.
    let gone_dir = dir.join("gone");
    std::fs::create_dir_all(&gone_dir).expect("mkdir");
    let closed = free_port();
    let gone = format!("http://127.0.0.1:{closed}");
    let (bridge, socket) = start_on_socket(&gone_dir, &[("PLAYBACK_PROXY", &gone)]);
    ok(&ctl(&socket, None, &["join", "u", "sim://echo", "x"]));
    let unreachable = failure(&play(&socket, &by_name(&http, "http")));
    assert!(
        unreachable.contains(&format!(
            "cannot reach the proxy (PLAYBACK_PROXY 127.0.0.1:{closed})"
        )),
        "{unreachable}"
    );
    bridge.stop();

    // A proxy URL the bridge cannot use stops it at start-up, naming the setting.
    let bad = Command::new(BIN)
        .env_clear()
        .env("PLAYBACK_PROXY", "socks5://u:hunter2@127.0.0.1:1080")
        .output()
        .expect("run the bridge");
    assert_eq!(bad.status.code(), Some(64));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("PLAYBACK_PROXY (--playback-proxy)"), "{said}");
    assert!(!said.contains("hunter2"), "{said}");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
