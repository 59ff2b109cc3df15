"""End-to-end scenarios against LiveKit's own server (livekit_server.py) with a real phone
(phone.py: LiveKit's Python SDK): the release bridge binary, with LiveKit's library inside it,
driven by stock grpcio over its Unix socket, as the backend would. TEST-ONLY CODE.

Run by tests/e2e.rs as `unshare -n python real.py <bridge binary> <scenario>...`, in a private
network namespace with a veth pair (run.py's `netns_setup`). Prints `RESULT key=value` lines,
which tests/e2e.rs parses and checks; exits non-zero, with the reason, if a check fails here.
"""

import asyncio
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import livekit_server  # noqa: E402
from livekit_server import LiveKitServer, token  # noqa: E402
from phone import Phone  # noqa: E402
from run import (Bridge, Ctx, check, load_stubs, measure, netns_setup, payload_rule,  # noqa: E402
                 read_chunks, result, stream_end, tone)
from livekit import api  # noqa: E402


class RealCtx(Ctx):
    """The backend's calls, with tokens LiveKit's server accepts: the bridge joins user `u` as
    `cloud-agent:u` in room `u`, its target being the phone `phone-u`."""

    async def join(self, user, identity=None, tok=None):
        identity = identity or f"cloud-agent:{user}"
        return await self.stub.JoinRoom(self.pb.JoinRoomRequest(
            user_id=user, room_name=user, token=tok or token(identity, user),
            livekit_url=self.sfu.url, target_identity=f"phone-{user}"), timeout=20)


async def phone_for(user, identity=None):
    return await Phone(identity or f"phone-{user}", user).join()


async def real_data_packets(ctx: RealCtx):
    """The phone's microphone as data packets reaches the client byte-exact after the payload
    rule, every one of them, while three other participants in the room send data packets of
    their own and publish tracks: a real SFU forwards everyone's, and only the target's are the
    user's audio. Reliable packets without a topic count; packets with a topic do not."""
    user = "dana"
    target = await phone_for(user)
    others = [await phone_for(user, f"visitor-{n}") for n in range(3)]
    for n, o in enumerate(others):
        _, feed = await o.publish_microphone(tone(300 + 100 * n, 5.0))
        asyncio.ensure_future(feed)
    r = await ctx.joined(user)
    check(r.participant_count == 5, f"participant_count {r.participant_count} (bridge, phone, 3)")
    call, queue = ctx.stream(user)
    await asyncio.sleep(1.0)  # the bridge's data channels are open

    async def chatter(o, n):
        for i in range(200):
            await o.send_data(bytes([0xEE, n]) + bytes(318))
            await asyncio.sleep(0.01)

    noise = [asyncio.ensure_future(chatter(o, n)) for n, o in enumerate(others)]
    started = time.monotonic()
    sent = await target.send_microphone(2.0, pcm=tone(440, 2.0))
    odd = [bytes([i]) * n for i, n in enumerate([7, 321, 1, 2])]  # the payload rule's cases
    for p in odd:
        await target.send_data(p)
    await target.send_data(b"\x01" + bytes(320), reliable=True)
    await target.send_data(b"\x02" + bytes(320), topic="chat")
    want = [payload_rule(p) for p in sent + odd] + [payload_rule(b"\x01" + bytes(320))]
    want = [w for w in want if w]
    got = [c.pcm_data for c in await read_chunks(call, len(want), timeout=10)]
    elapsed = time.monotonic() - started
    for n in noise:
        await n
    check(got == want, f"{sum(a != b for a, b in zip(got, want))} of {len(want)} chunks differ")
    # Nothing else arrives: no visitor's packet, no topic packet.
    extra = None
    try:
        extra = await asyncio.wait_for(call.read(), 1.0)
    except asyncio.TimeoutError:
        pass
    check(extra is None, f"an extra chunk arrived: {extra!r:.200}")
    result("real_data_packets_checked", len(want))
    result("real_data_packets_lost", len(want) - len(got))
    result("real_data_packets_elapsed_s", f"{elapsed:.2f}")
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    for p in [target] + others:
        await p.leave()


def heard_span(samples, rate=16000, level=0.05):
    """(seconds from the first loud 10 ms to the last, Hz, RMS of that span) of what a phone
    heard."""
    block = rate // 100
    loud = [i for i in range(0, len(samples) - block + 1, block)
            if max(abs(s) for s in samples[i:i + block]) > level * 32767]
    if not loud:
        return 0.0, 0.0, 0.0
    span = [s / 32767 for s in samples[loud[0]:loud[-1] + block]]
    hz, rms = measure(span, rate)
    return len(span) / rate, hz, rms


async def real_publish_heard(ctx: RealCtx):
    """Client PCM on StreamAudio, published by the bridge, is heard by the real phone whole:
    3 s of 440 Hz at half scale, from its first 10 ms to its last, at 440 Hz and the sent
    level (RMS 0.354)."""
    user = "erik"
    target = await phone_for(user)
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    pcm = tone(440, 3.0)
    sent_at = time.monotonic()
    for i in range(0, len(pcm), 3200):  # 100 ms chunks, as the backend sends them
        queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=pcm[i:i + 3200],
                                           sample_rate=16000, channels=1, track_id=0))
    for _ in range(100):
        if target.heard.get("speaker") and len(target.samples("speaker")) > 16000 * 4:
            break
        await asyncio.sleep(0.1)
    frames = target.heard.get("speaker", [])
    check(frames, "the phone never heard the bridge's speaker track")
    seconds, hz, rms = heard_span(target.samples("speaker"))
    first = next(t for t, b in frames if max(abs(s) for s in b) > 0.05 * 32767)
    check(abs(seconds - 3.0) <= 0.04, f"heard {seconds:.3f} s of 3 s")
    check(abs(hz - 440) < 2, f"heard {hz:.1f} Hz")
    check(abs(rms - 0.354) < 0.05, f"heard RMS {rms:.3f}")
    result("real_publish_heard_s", f"{seconds:.3f}")
    result("real_publish_hz", f"{hz:.1f}")
    result("real_publish_rms", f"{rms:.3f}")
    result("real_publish_first_heard_ms", f"{(first - sent_at) * 1000:.0f}")
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await target.leave()


async def real_target_track(ctx: RealCtx):
    """The phone's microphone as an Opus track (published before the bridge joins): the bridge
    subscribes and the client hears 3 s of 440 Hz whole, at the sent level."""
    user = "fay"
    target = await phone_for(user)
    publication, feed = await target.publish_microphone(tone(440, 3.0))
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    await asyncio.sleep(1.0)  # subscribed
    started = time.monotonic()
    await feed
    chunks = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(call.read(), deadline - time.monotonic())
        except asyncio.TimeoutError:
            break
        check(chunk is not grpc.aio.EOF, "the stream ended")
        chunks.append(chunk)
    samples = [int.from_bytes(c.pcm_data[i:i + 2], "little", signed=True)
               for c in chunks for i in range(0, len(c.pcm_data), 2)]
    seconds, hz, rms = heard_span(samples)
    check(abs(seconds - 3.0) <= 0.05, f"heard {seconds:.3f} s of 3 s")
    check(abs(hz - 440) < 2, f"heard {hz:.1f} Hz")
    check(abs(rms - 0.354) < 0.05, f"heard RMS {rms:.3f}")
    result("real_track_heard_s", f"{seconds:.3f}")
    result("real_track_hz", f"{hz:.1f}")
    result("real_track_rms", f"{rms:.3f}")
    result("real_track_fed_s", f"{time.monotonic() - started:.2f}")
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await target.leave()


async def ended(ctx, user, cause):
    """Joins `user`, waits for its audio, then `cause()`s the end: the stream's (status, reason)
    and GetStatus's reason."""
    target = await phone_for(user)
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    await asyncio.sleep(0.5)
    await target.send_data(b"\x00" + bytes(320))
    await read_chunks(call, 1)
    asked = time.monotonic()
    await cause(user)
    got = await stream_end(call)
    took = time.monotonic() - asked
    status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
    queue.put_nowait(None)
    await target.leave()
    return got, status.last_disconnect_reason, took


async def real_end_table(ctx: RealCtx):
    """The end table with the real server's own reasons: RemoveParticipant and DeleteRoom end
    the stream OK (a rejoin would undo the operator); another client joining as the bridge's
    identity ends it OK `replaced_elsewhere`, and no join or kick follows."""
    S = grpc.StatusCode
    lk = ctx.sfu.api()

    async def remove(user):
        await lk.room.remove_participant(api.RoomParticipantIdentity(
            room=user, identity=f"cloud-agent:{user}"))

    async def delete(user):
        await lk.room.delete_room(api.DeleteRoomRequest(room=user))

    impostors = []

    async def duplicate(user):
        impostors.append(await Phone(f"cloud-agent:{user}", user).join())

    for user, cause, want, name in [
            ("gus", remove, (S.OK, "removed"), "PARTICIPANT_REMOVED"),
            ("hal", delete, (S.OK, "room_deleted"), "ROOM_DELETED"),
            ("ida", duplicate, (S.OK, "replaced_elsewhere"), "DUPLICATE_IDENTITY")]:
        got, reason, took = await ended(ctx, user, cause)
        check(got == want, f"{name}: the stream ended {got}; wanted {want}")
        check(name in reason, f"{name}: GetStatus says {reason!r}")
        result(f"real_end_{name}", f"{got[0].name} {got[1]} after {took * 1000:.0f} ms")
    # The bridge does not fight back: the impostor stays, nobody rejoins, for 10 s.
    await asyncio.sleep(10)
    check(impostors[0].disconnected is None, f"the impostor was kicked: {impostors[0].disconnected}")
    ps = await lk.room.list_participants(api.ListParticipantsRequest(room="ida"))
    identities = sorted(p.identity for p in ps.participants)
    check(identities == ["cloud-agent:ida"], f"room ida holds {identities}")
    result("real_end_no_fight_s", 10)
    for p in impostors:
        await p.leave()
    await lk.aclose()


async def real_tokens(ctx: RealCtx):
    """Tokens LiveKit's server refuses: JoinRoom answers success: false with the reason, and a
    session already in the room is untouched."""
    bystander = "jay"
    target = await phone_for(bystander)
    await ctx.joined(bystander)
    call, queue = ctx.stream(bystander)
    await asyncio.sleep(0.5)
    tokens = []
    for name, tok, said in [
            ("expired", token("cloud-agent:kim", "kim", ttl_s=-60), "token is expired"),
            ("wrong_secret", token("cloud-agent:kim", "kim", secret="not-the-servers-secret-0123456789"),
             "signature is invalid"),
            ("garbage", "not-a-jwt", "invalid authorization token")]:
        asked = time.monotonic()
        r = await ctx.join("kim", tok=tok)
        check(not r.success, f"{name}: the join succeeded")
        check("could not connect" in r.error, f"{name}: {r.error}")
        check(tok not in r.error, f"{name}: the answer echoes the token: {r.error}")
        check(said in r.error, f"{name}: the answer does not say {said!r}: {r.error}")
        tokens.append(tok)
        result(f"real_token_{name}", f"{r.error!r} after {(time.monotonic() - asked) * 1000:.0f} ms")
    await target.send_data(b"\x00" + bytes(320))
    await read_chunks(call, 1)
    status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=bystander))
    check(status.connected, "the bystander lost its room")
    with open(ctx.bridge.log.name) as f:
        log = f.read()
    leaks = [line for line in log.splitlines() if any(t in line for t in tokens[:2])]
    check(not leaks, f"the bridge's log holds a refused token: {leaks[:1]!r:.600}")
    queue.put_nowait(None)
    await target.leave()


SCENARIOS = {
    "real_data_packets": real_data_packets,
    "real_publish_heard": real_publish_heard,
    "real_target_track": real_target_track,
    "real_end_table": real_end_table,
    "real_tokens": real_tokens,
}


async def main(binary, names):
    netns_setup()
    with tempfile.TemporaryDirectory() as tmp:
        pb, pbg = load_stubs(tmp)
        server = LiveKitServer(tmp)
        await server.start()
        bridge = Bridge(binary, tmp)
        failed = ctx = None
        try:
            await bridge.wait_ready()
            ctx = RealCtx(pb, pbg, bridge, server)
            for name in names:
                started = time.monotonic()
                await asyncio.wait_for(SCENARIOS[name](ctx), 600)
                result(f"{name}_seconds", f"{time.monotonic() - started:.1f}")
            check(bridge.proc.poll() is None, "the bridge exited")
            await ctx.channel.close()
        except BaseException as e:  # report, then show the logs
            failed = e
        finally:
            code = bridge.stop()
            await server.stop()
            with open(os.path.join(tmp, "bridge.log")) as f:
                log = f.read()
            server_log = server.tail()
        if failed is not None or "panicked" in log:
            print("---- bridge log (tail) ----\n" + log[-6000:], flush=True)
            print("---- livekit-server log (tail) ----\n" + server_log, flush=True)
            raise failed or AssertionError("the bridge panicked")
        check(code == 0, f"the bridge exited with {code} on SIGTERM")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
