//! Every unary request, decoded from arbitrary bytes and handled by the real service against
//! the simulated room: no panic, and each answer is one the contract allows.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use livekit_bridge::proto::live_kit_bridge_server::LiveKitBridge;
use livekit_bridge::proto::{
    BridgeStatusRequest, HealthCheckRequest, JoinRoomRequest, LeaveRoomRequest, PlayAudioRequest,
    StopAudioRequest,
};
use livekit_bridge::service::checks::audio_url;
use livekit_bridge::service::{Bridge, BridgeState, ServiceSettings, checks};
use prost::Message;
use tonic::{Code, Request};

#[derive(Arbitrary, Debug)]
struct Call {
    rpc: u8,
    bytes: Vec<u8>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
}

/// Keeps simulated rooms short-lived: no lingering threads, no slow connects.
fn tame(url: &mut String) {
    if url.to_ascii_lowercase().starts_with("sim://") {
        url.push_str(if url.contains('?') { "&" } else { "?" });
        url.push_str("linger_ms=0&connect_delay_ms=0&pace=realtime");
    }
}

/// Points any URL the bridge would fetch at a closed loopback port, parsing it exactly as the
/// bridge does, so fuzzing never sends traffic anywhere else.
fn keep_on_loopback(url: &mut String) {
    if let Ok(mut parsed) = audio_url(url) {
        let moved = parsed.set_host(Some("127.0.0.1")).is_ok() && parsed.set_port(Some(1)).is_ok();
        *url = if moved {
            parsed.to_string()
        } else {
            String::new()
        };
    }
}

async fn handle(bridge: &Bridge, call: &Call) {
    match call.rpc % 6 {
        0 => {
            let Ok(mut req) = JoinRoomRequest::decode(call.bytes.as_slice()) else {
                return;
            };
            tame(&mut req.livekit_url);
            let invalid = checks::join(&req).is_err();
            match bridge.join_room(Request::new(req.clone())).await {
                Ok(r) => {
                    assert!(
                        !invalid,
                        "a request outside the bad-input table was accepted"
                    );
                    let r = r.into_inner();
                    assert_eq!(r.success, r.error.is_empty(), "{r:?}");
                }
                Err(s) => assert!(
                    matches!(s.code(), Code::InvalidArgument | Code::Unavailable),
                    "{s:?}"
                ),
            }
        }
        1 => {
            let Ok(req) = LeaveRoomRequest::decode(call.bytes.as_slice()) else {
                return;
            };
            let invalid = checks::leave(&req).is_err();
            match bridge.leave_room(Request::new(req)).await {
                Ok(r) => {
                    assert!(!invalid);
                    let r = r.into_inner();
                    assert!(r.success || r.error == "session not found", "{r:?}");
                }
                Err(s) => assert!(invalid && s.code() == Code::InvalidArgument, "{s:?}"),
            }
        }
        2 => {
            let Ok(req) = BridgeStatusRequest::decode(call.bytes.as_slice()) else {
                return;
            };
            let invalid = checks::status(&req).is_err();
            match bridge.get_status(Request::new(req)).await {
                Ok(r) => assert!(!invalid && !r.into_inner().server_version.is_empty()),
                Err(s) => assert!(invalid && s.code() == Code::InvalidArgument, "{s:?}"),
            }
        }
        3 => {
            let Ok(req) = HealthCheckRequest::decode(call.bytes.as_slice()) else {
                return;
            };
            let invalid = checks::health(&req).is_err();
            match bridge.health_check(Request::new(req)).await {
                Ok(r) => assert!(!invalid && r.into_inner().active_sessions >= 0),
                Err(s) => assert!(invalid && s.code() == Code::InvalidArgument, "{s:?}"),
            }
        }
        4 => {
            let Ok(req) = StopAudioRequest::decode(call.bytes.as_slice()) else {
                return;
            };
            let invalid = checks::stop(&req).is_err();
            match bridge.stop_audio(Request::new(req)).await {
                Ok(r) => assert!(!invalid && r.into_inner().success),
                Err(s) => assert!(
                    matches!(s.code(), Code::InvalidArgument | Code::NotFound),
                    "{s:?}"
                ),
            }
        }
        _ => {
            let Ok(mut req) = PlayAudioRequest::decode(call.bytes.as_slice()) else {
                return;
            };
            keep_on_loopback(&mut req.audio_url);
            match bridge.play_audio(Request::new(req)).await {
                Ok(_) => {}
                Err(s) => assert!(
                    matches!(
                        s.code(),
                        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
                    ),
                    "{s:?}"
                ),
            }
        }
    }
}

fuzz_target!(|calls: Vec<Call>| {
    runtime().block_on(async {
        let settings = ServiceSettings {
            connect_timeout: Duration::from_millis(50),
            // ws:// and wss:// fail for want of the library, so nothing leaves the machine.
            livekit_ffi_lib: "/nonexistent/liblivekit_ffi.so".into(),
            ..Default::default()
        };
        let state = BridgeState::new(settings).expect("valid settings");
        let bridge = Bridge::new(state.clone());
        for call in calls.iter().take(16) {
            handle(&bridge, call).await;
        }
        let counts = state.registry.counts();
        let (registered, connected) = (counts.registered, counts.connected);
        assert!(connected <= registered);
        state.drain().await;
        assert!(state.registry.is_empty(), "drain left a session behind");
    });
});
