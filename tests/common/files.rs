//! Files the tests play and serve, made by Debian's tools: audio by sox and lame, a CA and a
//! server certificate by openssl. Made once per test process in its own directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("livekit-bridge-playback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    })
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{cmd} is needed for these tests (scripts/setup installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 1 kHz sine at half scale, made by sox. `format` is the file extension; `encoding` adds
/// sox's `-b`/`-e` options.
pub fn sine(name: &str, rate: u32, channels: u32, seconds: f64, encoding: &[&str]) -> Vec<u8> {
    let path = work_dir().join(name);
    let (rate, channels, secs) = (rate.to_string(), channels.to_string(), seconds.to_string());
    let mut args = vec!["-n", "-r", &rate, "-c", &channels];
    args.extend_from_slice(encoding);
    let path_str = path.to_str().expect("utf-8 path");
    args.extend_from_slice(&[path_str, "synth", &secs, "sine", "1000", "vol", "0.5"]);
    run("sox", &args);
    std::fs::read(&path).expect("read sox output")
}

/// The same sine as an MP3, encoded by lame (VBR, with the LAME tag that makes it gapless).
pub fn sine_mp3(name: &str, rate: u32, channels: u32, seconds: f64) -> Vec<u8> {
    sine(
        &format!("{name}.wav"),
        rate,
        channels,
        seconds,
        &["-b", "16"],
    );
    let wav = work_dir().join(format!("{name}.wav"));
    let mp3 = work_dir().join(name);
    run(
        "lame",
        &[
            "--quiet",
            "-V",
            "2",
            wav.to_str().expect("path"),
            mp3.to_str().expect("path"),
        ],
    );
    std::fs::read(&mp3).expect("read lame output")
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made by openssl.
pub fn test_pki() -> (PathBuf, PathBuf, PathBuf) {
    let d = work_dir();
    let p = |n: &str| d.join(n).to_str().expect("path").to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bridge test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("server.pem"),
        ],
    );
    (d.join("ca.pem"), d.join("server.pem"), d.join("server.key"))
}
