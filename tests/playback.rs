//! PlayAudio and StopAudio end to end: real audio files made by sox and lame, served by a local
//! HTTP server, played into a simulated room whose `echo` mode hands the track's audio back on
//! StreamAudio, where it is measured.

mod common;

use std::time::{Duration, Instant};

use common::files::{sine, sine_mp3, test_pki};
use common::http::{HttpServer, Route};
use common::play::{Events, play_request};
use common::*;
use livekit_bridge::playback::egress::EgressPolicy;
use livekit_bridge::playback::{Output, PlaybackSettings, measure_tone};
use livekit_bridge::proto;
use livekit_bridge::proto::play_audio_event::EventType;
use livekit_bridge::service::ServiceSettings;
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// Driving a playback and hearing it back.

/// A bridge whose playbacks may fetch from this machine's test servers (loopback), which the
/// default egress policy refuses.
async fn bridge_with(playback: PlaybackSettings) -> (Bridge, Client) {
    let bridge = Bridge::with(ServiceSettings {
        playback: PlaybackSettings {
            egress: EgressPolicy::parse("", "127.0.0.0/8").expect("loopback"),
            ..playback
        },
        ..Default::default()
    })
    .await;
    let client = bridge.client().await;
    (bridge, client)
}

/// Plays `url` for `user` (already joined to `sim://echo`, with `stream` open) and collects
/// the audio the room hands back until the playback ends.
async fn play_and_hear(
    client: &mut Client,
    stream: &mut Stream,
    req: proto::PlayAudioRequest,
) -> (Events, Vec<u8>) {
    let mut events = Events::open(client, req).await;
    let mut pcm = Vec::new();
    let mut ended = false;
    let mut quiet_since: Option<Instant> = None;
    loop {
        tokio::select! {
            e = events.next(), if !ended => {
                if e.expect("event status").is_none() {
                    ended = true;
                    quiet_since = Some(Instant::now());
                }
            }
            chunk = tokio::time::timeout(Duration::from_millis(100), stream.rx.message()) => {
                match chunk {
                    Ok(Ok(Some(c))) => pcm.extend_from_slice(&c.pcm_data),
                    Ok(other) => panic!("StreamAudio ended during playback: {other:?}"),
                    Err(_) if quiet_since.is_some_and(|t| t.elapsed() > Duration::from_millis(200)) => break,
                    Err(_) => {}
                }
            }
        }
    }
    (events, pcm)
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: &'static str,
    volume: f32,
    codec: &'static str,
    seconds: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_and_rate_arrives_as_the_tone_at_the_volume_and_length() {
    let s = 1.25;
    let cases = vec![
        Case {
            name: "s16-mono-8k.wav",
            body: sine("s16-mono-8k.wav", 8_000, 1, s, &["-b", "16"]),
            content_type: "audio/wav",
            volume: 0.0,
            codec: "pcm_s16le",
            seconds: s,
        },
        Case {
            name: "s16-stereo-22k.wav",
            body: sine("s16-stereo-22k.wav", 22_050, 2, s, &["-b", "16"]),
            content_type: "audio/wav",
            volume: 0.5,
            codec: "pcm_s16le",
            seconds: s,
        },
        Case {
            name: "s24-stereo-44k.wav",
            body: sine("s24-stereo-44k.wav", 44_100, 2, s, &["-b", "24"]),
            content_type: "audio/x-wav",
            volume: 1.0,
            codec: "pcm_s24le",
            seconds: s,
        },
        Case {
            name: "s32-mono-48k.wav",
            body: sine("s32-mono-48k.wav", 48_000, 1, s, &["-b", "32"]),
            content_type: "audio/wav",
            volume: 0.5,
            codec: "pcm_s32le",
            seconds: s,
        },
        Case {
            name: "f32-stereo-44k.wav",
            body: sine(
                "f32-stereo-44k.wav",
                44_100,
                2,
                s,
                &["-e", "floating-point", "-b", "32"],
            ),
            content_type: "audio/wav",
            volume: 0.0,
            codec: "pcm_f32le",
            seconds: s,
        },
        Case {
            name: "mono-16k.wav",
            body: sine("mono-16k.wav", 16_000, 1, s, &["-b", "16"]),
            content_type: "audio/wav",
            volume: 2.0,
            codec: "pcm_s16le",
            seconds: s,
        },
        Case {
            name: "mp3-8k.mp3",
            body: sine_mp3("mp3-8k.mp3", 8_000, 1, s),
            content_type: "audio/mpeg",
            volume: 0.0,
            codec: "mp3",
            seconds: s,
        },
        Case {
            name: "mp3-22k.mp3",
            body: sine_mp3("mp3-22k.mp3", 22_050, 2, s),
            content_type: "audio/mpeg",
            volume: 0.5,
            codec: "mp3",
            seconds: s,
        },
        Case {
            name: "mp3-44k.mp3",
            body: sine_mp3("mp3-44k.mp3", 44_100, 2, s),
            content_type: "audio/mpeg",
            volume: 1.0,
            codec: "mp3",
            seconds: s,
        },
        Case {
            name: "mp3-48k.mp3",
            body: sine_mp3("mp3-48k.mp3", 48_000, 1, s),
            content_type: "audio/mpeg",
            volume: 0.5,
            codec: "mp3",
            seconds: s,
        },
        Case {
            name: "vorbis-44k.ogg",
            body: sine("vorbis-44k.ogg", 44_100, 2, s, &[]),
            content_type: "audio/ogg",
            volume: 0.0,
            codec: "vorbis",
            seconds: s,
        },
        Case {
            name: "flac-48k.flac",
            body: sine("flac-48k.flac", 48_000, 2, s, &["-b", "24"]),
            content_type: "audio/flac",
            volume: 0.5,
            codec: "flac",
            seconds: s,
        },
    ];
    let http = HttpServer::start().await;
    let (bridge, client) = bridge_with(PlaybackSettings::default()).await;
    let mut runs = tokio::task::JoinSet::new();
    for case in cases {
        let path = format!("/{}", case.name);
        http.route(
            &path,
            Route::File {
                body: case.body.clone(),
                content_type: case.content_type.into(),
            },
        );
        let url = http.url(&path);
        let mut client = client.clone();
        runs.spawn(async move {
            let user = format!("user-{}", case.name);
            join_ok(&mut client, &user, "sim://echo").await;
            let mut stream = open(&mut client, &user).await;
            let req = play_request(&user, case.name, &url, case.volume, 0);
            let (events, pcm) = play_and_hear(&mut client, &mut stream, req).await;
            (case, events, pcm)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = runs.join_next().await {
        let (case, events, pcm) = done.expect("case task");
        let name = case.name;
        let kinds: Vec<i32> = events.seen.iter().map(|(_, e)| e.r#type).collect();
        assert_eq!(
            kinds.first(),
            Some(&(EventType::Started as i32)),
            "{name}: {:?}",
            events.seen
        );
        assert_eq!(
            kinds.last(),
            Some(&(EventType::Completed as i32)),
            "{name}: {:?}",
            events.seen
        );
        let started = &events.seen[0].1;
        assert_eq!(
            started.metadata.get("codec").map(String::as_str),
            Some(case.codec),
            "{name}"
        );
        assert_eq!(
            started.metadata.get("track").map(String::as_str),
            Some("speaker")
        );
        latencies.push((
            name,
            started.metadata["start_latency_ms"]
                .parse::<u64>()
                .expect("latency"),
        ));
        let progress: Vec<i64> = events
            .seen
            .iter()
            .filter(|(_, e)| e.r#type == EventType::Progress as i32)
            .map(|(_, e)| e.position_ms)
            .collect();
        assert_eq!(progress, vec![1000], "{name}: one PROGRESS a second");

        let completed = &events.seen.last().expect("events").1;
        let length_ms = (case.seconds * 1000.0) as i64;
        // Vorbis's end padding (under one block) is not trimmed on a stream that cannot seek.
        let slack = if case.codec == "vorbis" { 30 } else { 10 };
        assert!(
            (completed.duration_ms - length_ms).abs() <= slack,
            "{name}: duration_ms {} for {length_ms} ms of audio",
            completed.duration_ms
        );
        // STARTED comes with the first frame and COMPLETED once the last has been taken, one
        // 10 ms frame before it has played; the events' arrival times here add the scheduling
        // jitter of a loaded machine (14 ms early was seen in CI with 12 ms allowed). The bug
        // this guards against, COMPLETED when the file was queued, is a whole file early.
        let played_for = events.at(EventType::Completed) - events.at(EventType::Started);
        assert!(
            played_for + Duration::from_millis(25) >= Duration::from_millis(length_ms as u64),
            "{name}: COMPLETED {played_for:?} after STARTED, for {length_ms} ms of audio"
        );

        // What the room received: the right length within one frame, 1 kHz, at the volume.
        let expected_samples = (case.seconds * 16_000.0) as i64;
        let got_samples = (pcm.len() / 2) as i64;
        assert!(
            (got_samples - expected_samples).abs() <= 160 * slack / 10,
            "{name}: {got_samples} samples for {expected_samples}"
        );
        let middle = &pcm[1600..pcm.len() - 1600];
        let (hz, rms) = measure_tone(middle, 16_000);
        assert!((hz - 1000.0).abs() <= 10.0, "{name}: measured {hz:.1} Hz");
        let gain = if case.volume == 0.0 {
            1.0
        } else {
            f64::from(case.volume)
        };
        let want = (0.5 * gain).min(1.0) / 2f64.sqrt();
        assert!(
            (rms - want).abs() <= want * 0.05,
            "{name}: level {rms:.4}, want {want:.4}"
        );
    }
    eprintln!("start latency (request to first frame, ms): {latencies:?}");
    assert_eq!(bridge.state.player.stats().live_workers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_format_comes_from_the_bytes_not_the_name() {
    let http = HttpServer::start().await;
    let mp3 = sine_mp3("named-wrong.mp3", 44_100, 1, 0.5);
    let wav = sine("named-wrong.wav", 16_000, 1, 0.5, &["-b", "16"]);
    http.route(
        "/clip.wav",
        Route::File {
            body: mp3,
            content_type: "application/octet-stream".into(),
        },
    );
    http.route(
        "/clip.mp3",
        Route::File {
            body: wav,
            content_type: "audio/mpeg".into(),
        },
    );
    let (_bridge, mut client) = bridge_with(PlaybackSettings::default()).await;
    join_ok(&mut client, "u", "sim://echo").await;
    for (url, codec) in [
        (http.url("/clip.wav?format=a.ogg&x=.flac"), "mp3"),
        (http.url("/clip.mp3?v=2.wav#frag.ogg"), "pcm_s16le"),
    ] {
        let mut events = Events::open(&mut client, play_request("u", "r", &url, 0.0, 1)).await;
        let started = events.expect(EventType::Started).await;
        assert_eq!(started.metadata["codec"], codec, "{url}");
        events.expect(EventType::Completed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audio_fails_clearly_and_the_session_carries_on() {
    let http = HttpServer::start().await;
    let wav = sine("bad-base.wav", 16_000, 1, 3.0, &["-b", "16"]);
    let mp3 = sine_mp3("bad-base.mp3", 44_100, 2, 3.0);
    let html = b"<!DOCTYPE html><html><body>Not found, but with a 200</body></html>".to_vec();
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = sine("bad-big.wav", 16_000, 1, 8.0, &["-b", "16"]);
    http.route("/boom.mp3", Route::Status(500));
    http.route(
        "/page.mp3",
        Route::File {
            body: html,
            content_type: "audio/mpeg".into(),
        },
    );
    http.route(
        "/empty.mp3",
        Route::File {
            body: Vec::new(),
            content_type: "audio/mpeg".into(),
        },
    );
    http.route(
        "/cut.mp3",
        Route::File {
            body: mp3[..mp3.len() * 3 / 5].to_vec(),
            content_type: "audio/mpeg".into(),
        },
    );
    http.route(
        "/short.mp3",
        Route::Short {
            body: mp3[..mp3.len() / 2].to_vec(),
            declared: mp3.len(),
        },
    );
    http.route(
        "/stall.wav",
        Route::Stall {
            body: wav.clone(),
            send: 20_000,
        },
    );
    http.route(
        "/big.wav",
        Route::File {
            body: big.clone(),
            content_type: "audio/wav".into(),
        },
    );
    http.route(
        "/big-chunked.wav",
        Route::Chunked {
            body: big,
            content_type: "audio/wav".into(),
        },
    );
    http.route("/loop", Route::Redirect("/loop".into()));
    http.route(
        "/noise.mp3",
        Route::File {
            body: noise,
            content_type: "audio/mpeg".into(),
        },
    );
    let good = sine("bad-good.wav", 16_000, 1, 0.3, &["-b", "16"]);
    http.route(
        "/good.wav",
        Route::File {
            body: good,
            content_type: "audio/wav".into(),
        },
    );

    let settings = PlaybackSettings {
        read_timeout: Duration::from_millis(400),
        max_bytes: 120_000,
        ..Default::default()
    };
    let (bridge, mut client) = bridge_with(settings).await;
    join_ok(&mut client, "u", "sim://echo").await;
    let cases = [
        ("/missing.mp3", "HTTP 404"),
        ("/boom.mp3", "HTTP 500"),
        ("/page.mp3", "HTML"),
        ("/empty.mp3", "empty body"),
        ("/cut.mp3", "cut short"),
        ("/short.mp3", "broke off"),
        ("/stall.wav", "stopped sending"),
        ("/big.wav", "over the limit"),
        ("/big-chunked.wav", "over the limit"),
        ("/loop", "redirects"),
        ("/noise.mp3", "not a supported audio format"),
    ];
    for (path, text) in cases {
        let mut events = Events::open(
            &mut client,
            play_request("u", path, &http.url(path), 0.0, 0),
        )
        .await;
        let asked = Instant::now();
        let failed = events.failed_with(text).await;
        assert_eq!(failed.request_id, path);
        eprintln!("{path} ({:?}): {}", asked.elapsed(), failed.error);
        assert_eq!(
            bridge.state.player.stats().live_workers(),
            0,
            "{path} left a worker running"
        );
    }
    let mut refused = Events::open(
        &mut client,
        play_request("u", "closed", "http://127.0.0.1:1/a.mp3", 0.0, 0),
    )
    .await;
    refused.failed_with("cannot connect").await;

    // Requests the caller must fix: FAILED, then INVALID_ARGUMENT.
    for (url, volume, text) in [
        ("", 0.0, "audio_url is required"),
        ("ftp://example.invalid/a.mp3", 0.0, "only http and https"),
        ("not a url", 0.0, "not a valid URL"),
        (http.url("/good.wav").as_str(), -1.0, "volume"),
    ] {
        let mut events = Events::open(&mut client, play_request("u", "bad", url, volume, 0)).await;
        let e = events
            .next()
            .await
            .expect("FAILED first")
            .expect("an event");
        assert_eq!(e.r#type, EventType::Failed as i32);
        assert!(
            e.error.contains(text),
            "{:?} should contain {text:?}",
            e.error
        );
        let status = events.next().await.expect_err("then a status");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // No session: NOT_FOUND. A session whose room is gone: FAILED_PRECONDITION.
    let err = client
        .play_audio(play_request("nobody", "r", &http.url("/good.wav"), 0.0, 0))
        .await
        .expect_err("no session");
    assert_eq!(err.code(), Code::NotFound);
    join_ok(&mut client, "lost", "sim://silent?drop_after_ms=30").await;
    let lost = bridge.state.registry.get("lost").expect("session");
    eventually("room lost", || !lost.is_connected()).await;
    let err = client
        .play_audio(play_request("lost", "r", &http.url("/good.wav"), 0.0, 0))
        .await
        .expect_err("room lost");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // After all of that the session is healthy and plays.
    assert!(status(&mut client, "u").await.connected);
    let mut good = Events::open(
        &mut client,
        play_request("u", "good", &http.url("/good.wav"), 0.0, 0),
    )
    .await;
    good.expect(EventType::Started).await;
    good.expect(EventType::Completed).await;
    assert_eq!(bridge.state.player.stats().live_workers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupts_and_stops_leave_nothing_running() {
    let http = HttpServer::start().await;
    // Eight seconds of audio, served at about twice real time: every stop below lands while
    // download, decoder and playout are all running.
    let wav = sine("long.wav", 16_000, 1, 8.0, &["-b", "16"]);
    http.route(
        "/long.wav",
        Route::Drip {
            body: wav,
            content_type: "audio/wav".into(),
            chunk: 3_200,
            every: Duration::from_millis(50),
        },
    );
    let url = http.url("/long.wav");
    let (bridge, mut client) = bridge_with(PlaybackSettings::default()).await;
    let stats = bridge.state.player.stats().clone();
    join_ok(&mut client, "u", "sim://silent").await;
    let session = bridge.state.registry.get("u").expect("session");
    let playing = || {
        let mut p = session.playbacks().playing();
        p.sort();
        p
    };
    let stop = |request_id: &str, track_id: i32| proto::StopAudioRequest {
        user_id: "u".into(),
        request_id: request_id.into(),
        reason: "test".into(),
        track_id,
    };

    // Playback starts while the download is still running.
    let asked = Instant::now();
    let mut a = Events::open(&mut client, play_request("u", "A", &url, 0.0, 0)).await;
    a.expect(EventType::Started).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "started after {:?}",
        asked.elapsed()
    );

    // A newer playback on the same track interrupts; another track plays alongside.
    let mut b = Events::open(&mut client, play_request("u", "B", &url, 0.0, 0)).await;
    a.failed_with("interrupted by request \"B\"").await;
    b.expect(EventType::Started).await;
    let mut c = Events::open(&mut client, play_request("u", "C", &url, 0.0, 1)).await;
    c.expect(EventType::Started).await;
    assert_eq!(playing(), vec![(0, "B".to_string()), (1, "C".to_string())]);
    let mut tracks = bridge.state.backends.sim.published_tracks("u");
    tracks.sort();
    assert_eq!(tracks, vec!["app_audio", "speaker"]);
    assert_eq!(stats.live_workers(), 6, "two playbacks, three workers each");

    // StopAudio by track, then by request id: each answers once its playback is gone.
    let r = client
        .stop_audio(stop("", 1))
        .await
        .expect("stop")
        .into_inner();
    assert!(r.success);
    assert_eq!(r.stopped_request_id, "C");
    assert_eq!(stats.live_workers(), 3);
    c.failed_with("stopped by StopAudio: test").await;
    let r = client
        .stop_audio(stop("B", 0))
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(r.stopped_request_id, "B");
    assert_eq!(stats.live_workers(), 0);
    b.failed_with("stopped by StopAudio").await;

    // stop_other interrupts every track; StopAudio with track -1 stops all.
    let mut d = Events::open(&mut client, play_request("u", "D", &url, 0.0, 0)).await;
    let mut e = Events::open(&mut client, play_request("u", "E", &url, 0.0, 2)).await;
    d.expect(EventType::Started).await;
    e.expect(EventType::Started).await;
    let mut f_req = play_request("u", "F", &url, 0.0, 7);
    f_req.stop_other = true;
    let mut f = Events::open(&mut client, f_req).await;
    d.failed_with("interrupted by request \"F\"").await;
    e.failed_with("interrupted by request \"F\"").await;
    f.expect(EventType::Started).await;
    let mut g = Events::open(&mut client, play_request("u", "G", &url, 0.0, 1)).await;
    g.expect(EventType::Started).await;
    let r = client
        .stop_audio(stop("", -1))
        .await
        .expect("stop")
        .into_inner();
    let mut stopped: Vec<&str> = r.stopped_request_id.split(',').collect();
    stopped.sort();
    assert_eq!(stopped, vec!["F", "G"]);
    assert_eq!(stats.live_workers(), 0);
    f.failed_with("stopped by StopAudio").await;
    g.failed_with("stopped by StopAudio").await;

    // Nothing playing: StopAudio succeeds and names nothing.
    let r = client
        .stop_audio(stop("", -1))
        .await
        .expect("stop")
        .into_inner();
    assert!(r.success && r.stopped_request_id.is_empty(), "{r:?}");
    let err = client
        .stop_audio(proto::StopAudioRequest {
            user_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect_err("no session");
    assert_eq!(err.code(), Code::NotFound);

    // A caller that cancels its PlayAudio stops the playback.
    let mut h = Events::open(&mut client, play_request("u", "H", &url, 0.0, 0)).await;
    h.expect(EventType::Started).await;
    drop(h);
    eventually("cancelled playback gone", || {
        stats.live_workers() == 0 && playing().is_empty()
    })
    .await;

    // Closing the session stops its playbacks.
    let mut i = Events::open(&mut client, play_request("u", "I", &url, 0.0, 0)).await;
    i.expect(EventType::Started).await;
    assert!(leave(&mut client, "u").await.success);
    i.failed_with("the session closed (session left: test)")
        .await;
    assert_eq!(stats.live_workers(), 0);
    assert!(playing().is_empty());

    // And every download was really abandoned: the server has no connection left.
    eventually("downloads closed", || http.open_connections() == 0).await;
    assert!(http.requests() >= 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_urls_play_when_their_certificate_is_trusted_and_fail_clearly_when_not() {
    let (ca, cert, key) = test_pki();
    let https = HttpServer::start_tls(&cert, &key).await;
    let wav = sine("tls.wav", 16_000, 1, 0.3, &["-b", "16"]);
    https.route(
        "/tls.wav",
        Route::File {
            body: wav,
            content_type: "audio/wav".into(),
        },
    );
    let url = https.url("/tls.wav");
    assert!(url.starts_with("https://127.0.0.1:"));

    let trusted = PlaybackSettings {
        ca_file: Some(ca),
        ..Default::default()
    };
    let (_bridge, mut client) = bridge_with(trusted).await;
    join_ok(&mut client, "u", "sim://echo").await;
    let mut events = Events::open(&mut client, play_request("u", "tls", &url, 0.0, 0)).await;
    events.expect(EventType::Started).await;
    let done = events.expect(EventType::Completed).await;
    assert_eq!(done.duration_ms, 300);

    // The built-in web roots do not include the test CA: the handshake fails, and says so.
    let (_bridge, mut client) = bridge_with(PlaybackSettings::default()).await;
    join_ok(&mut client, "u", "sim://echo").await;
    let mut events = Events::open(&mut client, play_request("u", "untrusted", &url, 0.0, 0)).await;
    let failed = events.failed_with("certificate").await;
    eprintln!("untrusted: {}", failed.error);
}

/// The egress policy: by default a playback fetches from the public internet only. Loopback by
/// address or by name, link-local (cloud metadata) and IPv6 loopback are refused before any
/// request is sent; with loopback opened to one address, a redirect to another is refused at
/// the hop; a host name can be allowed whatever it resolves to.
#[tokio::test]
async fn the_egress_policy_refuses_private_addresses_on_every_hop() {
    let http = HttpServer::start().await;
    let tone = sine("egress.wav", 16_000, 1, 0.2, &["-b", "16"]);
    http.route(
        "/tone.wav",
        Route::File {
            body: tone,
            content_type: "audio/wav".into(),
        },
    );
    let direct = http.url("/tone.wav");
    let port = reqwest::Url::parse(&direct)
        .ok()
        .and_then(|u| u.port())
        .expect("port");
    http.route(
        "/hop",
        Route::Redirect(format!("http://127.0.0.2:{port}/tone.wav")),
    );

    let strict = Bridge::with(ServiceSettings::default()).await;
    let mut client = strict.client().await;
    join_ok(&mut client, "e", "sim://echo").await;
    for url in [
        direct.clone(),
        format!("http://localhost:{port}/tone.wav"),
        "http://169.254.169.254/latest/meta-data/iam".into(),
        format!("http://[::1]:{port}/tone.wav"),
    ] {
        let failed = common::play::outcome(&mut client, "e", "strict", &url)
            .await
            .unwrap_or_else(|| panic!("{url} was played"));
        assert!(
            failed.contains("refused by the egress policy"),
            "{url}: {failed}"
        );
    }
    assert_eq!(http.requests(), 0, "a request reached a refused server");

    let policy = |hosts: &str, nets: &str| ServiceSettings {
        playback: PlaybackSettings {
            egress: EgressPolicy::parse(hosts, nets).expect("valid policy"),
            ..Default::default()
        },
        ..Default::default()
    };
    let one = Bridge::with(policy("", "127.0.0.1/32")).await;
    let mut client = one.client().await;
    join_ok(&mut client, "e", "sim://echo").await;
    let played = common::play::outcome(&mut client, "e", "allowed", &direct).await;
    assert_eq!(played, None, "127.0.0.1 is allowed");
    let hop = common::play::outcome(&mut client, "e", "hop", &http.url("/hop"))
        .await
        .expect("the redirect to 127.0.0.2 is refused");
    assert!(hop.contains("127.0.0.2"), "{hop}");
    assert!(hop.contains("refused by the egress policy"), "{hop}");

    let by_name = Bridge::with(policy("localhost", "")).await;
    let mut client = by_name.client().await;
    join_ok(&mut client, "e", "sim://echo").await;
    let url = format!("http://localhost:{port}/tone.wav");
    let played = common::play::outcome(&mut client, "e", "named", &url).await;
    assert_eq!(played, None, "localhost is allowed by name");
}
