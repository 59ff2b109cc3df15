"""Drives the bridge the way an operator's script does: stock Python grpcio, no channel options,
over the Unix socket, in both of grpcio's spellings of a socket target. grpcio sends the socket
path as :authority, which the bridge must accept. Usage:
    python stock_client.py /path/to/bridge.sock
Exits 0 when every check passed; raises (exit 1) on the first that failed.
"""
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    out = tempfile.mkdtemp(prefix="bridge-stubs-")
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "livekit_bridge.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    import livekit_bridge_pb2
    import livekit_bridge_pb2_grpc
    return livekit_bridge_pb2, livekit_bridge_pb2_grpc


class _Auth(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer token to every call."""

    def _with_token(self, details):
        metadata = list(details.metadata or []) + list(AUTH)
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


pb, pbg = stubs()
checks = []


TOKEN = os.environ.get("BRIDGE_AUTH_TOKEN")
AUTH = (("authorization", f"Bearer {TOKEN}"),) if TOKEN else None


def drive(target, user):
    # With BRIDGE_AUTH_TOKEN, every call carries it (interceptor-free: per-call metadata).
    channel = grpc.insecure_channel(target)
    if AUTH:
        for method in ("/grpc.health.v1.Health/Check",
                       "/mentra.livekit.bridge.LiveKitBridge/HealthCheck"):
            try:
                channel.unary_unary(method)(b"", timeout=5)
                raise AssertionError(f"{method} answered without the token")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
        checks.append(f"{target}: UNAUTHENTICATED without the token, health included")
        channel = grpc.intercept_channel(channel, _Auth())
    bridge = pbg.LiveKitBridgeStub(channel)

    health = bridge.HealthCheck(pb.HealthCheckRequest(), timeout=5)
    assert health.status == pb.HealthCheckResponse.SERVING, health
    checks.append(f"{target}: HealthCheck SERVING")

    # The standard health and reflection services, called as raw protobuf bytes.
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    assert check(b"", timeout=5) == b"\x08\x01", "grpc.health.v1 says SERVING"
    reflect = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    listed = b"".join(reflect(iter([b"\x3a\x00"]), timeout=5))
    assert b"mentra.livekit.bridge.LiveKitBridge" in listed, listed
    checks.append(f"{target}: grpc.health.v1 and reflection")

    joined = bridge.JoinRoom(pb.JoinRoomRequest(user_id=user, room_name=user, token="token",
                                                livekit_url="sim://echo", target_identity=user),
                             timeout=5)
    assert joined.success, joined.error
    checks.append(f"{target}: JoinRoom")

    sent = bytes((i * 13) % 251 for i in range(3200))
    received = bytearray()

    def chunks():
        yield pb.AudioChunk(user_id=user, sample_rate=16000, channels=1)
        yield pb.AudioChunk(user_id=user, pcm_data=sent, sample_rate=16000, channels=1)
        while len(received) < len(sent):
            time.sleep(0.01)
        bridge.LeaveRoom(pb.LeaveRoomRequest(user_id=user, reason="done"), timeout=5)

    call = bridge.StreamAudio(chunks(), timeout=10)
    for chunk in call:
        assert (chunk.sample_rate, chunk.channels) == (16000, 1)
        received.extend(chunk.pcm_data)
    assert bytes(received[:len(sent)]) == sent, "echo is byte-exact"
    assert call.code() == grpc.StatusCode.OK, call.code()
    assert ("x-bridge-end-reason", "left") in call.trailing_metadata(), call.trailing_metadata()
    checks.append(f"{target}: StreamAudio round trip, ends OK 'left' after LeaveRoom")

    status = bridge.GetStatus(pb.BridgeStatusRequest(user_id=user), timeout=5)
    assert not status.connected
    try:
        bridge.JoinRoom(pb.JoinRoomRequest(user_id="", livekit_url="sim://tone"), timeout=5)
        raise AssertionError("an empty user_id was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    checks.append(f"{target}: GetStatus, INVALID_ARGUMENT")
    channel.close()


socket = sys.argv[1]
drive(f"unix:{socket}", "python-user-1")
drive(f"unix://{os.path.abspath(socket)}", "python-user-2")
print(json.dumps({"ok": True, "checks": checks}))
