"""Against the mock SFU (harness/mock_sfu.py): only what LiveKit's own server cannot do on
demand, each scenario saying why."""

import asyncio
import os

import grpc
from livekit.protocol import models

from harness.backend import Ctx, read_chunks, stream_end
from harness.mock_sfu import MockSfu, make_token
from harness.network import HOST
from harness.report import check, result
from scenarios.churn import churn_cycles


class MockCtx(Ctx):
    """The backend's calls to the mock: any token names its identity, the target is
    `target`."""

    async def join(self, user, identity=None):
        identity = identity or f"cloud-agent:{user}"
        return await self.stub.JoinRoom(self.pb.JoinRoomRequest(
            user_id=user, room_name=user, token=make_token(identity, user),
            livekit_url=self.sfu.url, target_identity="target"), timeout=20)

    async def participant(self, user):
        """The mock's view of the bridge's participant for `user` (the latest to join)."""
        identity = f"cloud-agent:{user}"
        for _ in range(200):
            p = self.sfu.participants.get(identity)
            if p is not None:
                return p
            await asyncio.sleep(0.05)
        raise AssertionError(f"{identity} never joined the mock SFU")


async def start_mock(tmp):
    sfu = MockSfu(HOST, 7880)
    await sfu.start()
    return sfu


# The scenarios here run against the mock SFU, started and joined this way.
SERVER = (start_mock, MockCtx)


async def server_shutdown_reason(ctx: MockCtx):
    """A disconnect with the reason SERVER_SHUTDOWN ends the stream UNAVAILABLE `room_lost` (a
    rejoin can work, on another node), and GetStatus says why. LiveKit's own shutdown reaches
    the library as a leave to reconnect after, never as this reason (`real_server_shutdown` in
    scenarios/ends.py), so only the mock can send it; the other reasons are LiveKit's own there."""
    user = "heidi"
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    p = await ctx.participant(user)
    await p.send_data("target", b"\x00" + bytes(320))
    await read_chunks(call, 1)
    queue.put_nowait(None)
    await p.server_disconnect(models.DisconnectReason.SERVER_SHUTDOWN)
    got = await stream_end(call)
    result("disconnect_end_SERVER_SHUTDOWN", f"{got[0].name} {got[1]}")
    check(got == (grpc.StatusCode.UNAVAILABLE, "room_lost"), f"the stream ended {got}")
    status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
    check(not status.connected, "still connected")
    check("SERVER_SHUTDOWN" in status.last_disconnect_reason, status.last_disconnect_reason)
    result("disconnect_reason_SERVER_SHUTDOWN", repr(status.last_disconnect_reason))


async def replaced_here(ctx: MockCtx):
    """A JoinRoom that replaces a session here makes LiveKit kick the old participant with
    DUPLICATE_IDENTITY; the old stream ends OK `replaced` whether the kick comes before the
    local close (kick at once) or after it (kick delayed), and the new session carries audio."""
    for delay in (0.0, 1.0):
        ctx.sfu.kick_delay = delay
        user = f"again{int(delay * 1000)}"
        old, old_queue = await streaming(ctx, user)
        await ctx.joined(user)
        got = await stream_end(old)
        check(got == (grpc.StatusCode.OK, "replaced"), f"kick after {delay} s: ended {got}")
        new, new_queue = ctx.stream(user)
        p = await ctx.participant(user)
        for _ in range(3):
            await p.send_data("target", b"\x00" + bytes(320))
        await read_chunks(new, 3)
        status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
        check(status.connected, f"kick after {delay} s: the new session is not connected")
        result(f"replaced_kick_after_{delay}s", f"{got[0].name} {got[1]}")
        for q in (old_queue, new_queue):
            q.put_nowait(None)
    ctx.sfu.kick_delay = 0.0


async def streaming(ctx: Ctx, user):
    """Joins `user`, opens its stream and waits for the first chunk from the target: the
    stream call and its request queue."""
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    p = await ctx.participant(user)
    await p.send_data("target", b"\x00" + bytes(320))
    await read_chunks(call, 1)
    return call, queue


async def churn(ctx: Ctx, cycles: int):
    """The original crash, on the real library: sessions left, replaced and rejoined while the
    server keeps sending packets; no panic, no frame from a closed session, and memory and
    threads back where they started. The mock tags each packet with the join it sends it to,
    so a stream may carry its own join's packets only."""
    user = "dave"
    stop = asyncio.Event()
    sent = {"n": 0}

    async def pump():
        # Packets to whichever participant is current, as fast as the channel takes them. Each
        # carries the join counter, so a frame can be traced to the session it was sent to.
        while not stop.is_set():
            p = ctx.sfu.participants.get(f"cloud-agent:{user}")
            if p is not None and not p.closed.is_set() and p.channels_open.is_set():
                tag = ctx.sfu.joins.to_bytes(4, "little")
                try:
                    for _ in range(5):
                        await p.send_data("target", b"\x00" + tag + bytes(316))
                        sent["n"] += 1
                except Exception:
                    pass
            await asyncio.sleep(0.002)

    pumper = asyncio.ensure_future(pump())
    try:
        _, _, rss_quarter, rss, _ = await churn_cycles(
            ctx, user, cycles, lambda: ctx.joined(user), lambda: ctx.sfu.joins,
            lambda got, want: got == want, sent, "churn")
    finally:
        stop.set()
        await pumper
    # After the first quarter has taken the allocator to its high-water mark, the remaining
    # three quarters of the cycles must not keep growing memory.
    check(rss <= rss_quarter + 2048, f"RSS {rss_quarter} KiB after {cycles // 4} cycles, "
          f"{rss} KiB after {cycles}")


SCENARIOS = {
    "replaced_here": replaced_here,
    "server_shutdown_reason": server_shutdown_reason,
    "churn": lambda ctx: churn(ctx, int(os.environ.get("E2E_CYCLES", "200"))),
}
