"""How a session ends, with LiveKit's own reasons: the stream's status and reason, GetStatus's
reason, and what happens next (the backend rejoins after an error status, not after OK)."""

import asyncio
import time

import grpc
from livekit import api

from harness import livekit_server
from harness.backend import (
    ended, joined_hearing, let_go, own_bridge, participant_sid, read_chunks, RealCtx, session_state,
    stream_end, TwoWay)
from harness.bridge import Bridge
from harness.livekit_server import token
from harness.phones import Phone, phone_for
from harness.report import check, result


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


async def real_two_bridges(ctx: RealCtx):
    """Two bridge processes joined as the same identity: the newer takes the room, the older's
    stream ends OK `replaced_elsewhere` (so its backend does not rejoin), and for 30 s neither
    joins again: the server keeps the newer's participant, whose stream hears the phone."""
    other = Bridge(ctx.bridge.binary, ctx.bridge.tmp, "bridge2")
    ctx2 = None
    user = "shared"
    phone = await phone_for(user, listen=False)
    try:
        await other.wait_ready()
        ctx2 = RealCtx(ctx.pb, ctx.pbg, other, ctx.sfu)
        first, first_queue = await joined_hearing(ctx, user, phone)
        await ctx2.joined(user)
        got = await stream_end(first)
        result("real_two_bridges_older_ended", f"{got[0].name} {got[1]}")
        status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
        check(not status.connected, "the older bridge still says connected")
        result("real_two_bridges_older_reason", repr(status.last_disconnect_reason))
        second, second_queue = ctx2.stream(user)
        sid = await participant_sid(ctx, user)
        sids = set()
        for _ in range(60):
            await asyncio.sleep(0.5)
            sids.add(await participant_sid(ctx, user))
        result("real_two_bridges_participants_in_30s", len(sids | {sid}))
        await asyncio.sleep(0.5)
        await phone.send_data(b"\x00" + bytes(320))
        await read_chunks(second, 1)
        result("real_two_bridges_newer_hears", "yes")
        for q in (first_queue, second_queue):
            q.put_nowait(None)
    finally:
        await phone.leave()
        if ctx2 is not None:
            await ctx2.channel.close()
        other.stop()


async def real_server_shutdown(ctx: RealCtx):
    """LiveKit's server stopped as an operator stops it (SIGTERM: it drains; a second SIGTERM
    closes every room with SERVER_SHUTDOWN): the stream ends UNAVAILABLE `room_lost` with the
    server's reason, so the backend rejoins, and a rejoin on the restarted server works."""
    user = "max"

    async def stop(_user):
        await ctx.sfu.stop("term")

    # The library tries 10 times, backing off to about 7 s between tries, before it gives up:
    # 13 to 35 s have been measured.
    got, reason, took = await ended(ctx, user, stop, timeout=60)
    check(got == (grpc.StatusCode.UNAVAILABLE, "room_lost"), f"the stream ended {got}")
    result("real_shutdown_end", f"{got[0].name} {got[1]} after {took * 1000:.0f} ms")
    result("real_shutdown_reason", repr(reason))
    await ctx.sfu.start()
    phone = await phone_for(user)
    _, queue = await joined_hearing(ctx, user, phone)
    result("real_shutdown_rejoined", "audio")
    queue.put_nowait(None)
    await phone.leave()


async def real_gives_up(ctx: RealCtx):
    """The bridge's own link gone for longer than the library tries to reconnect (its end of
    the veth pair down, so each attempt fails at once): the stream ends UNAVAILABLE `room_lost`
    with a readable reason, so the backend rejoins, and nothing of the session is left (no
    session, the bridge's threads back to where they were before the join)."""
    bridge, bctx = await own_bridge(ctx)
    user = "lost"
    phone = await phone_for(user)
    try:
        # The library's own threads stay once it is loaded: load it with a join and a leave.
        await bctx.joined("warm-up")
        await bctx.stub.LeaveRoom(bctx.pb.LeaveRoomRequest(user_id="warm-up"))
        await asyncio.sleep(1)
        _, threads_before = bridge.status_of()
        flow = await TwoWay.flowing(bctx, user, phone)
        flow.stop_sending()
        bridge.network.set_own(False)
        t0 = time.monotonic()
        states = []
        while flow.ended is None and time.monotonic() - t0 < 180:
            state = await session_state(bctx, user)
            if not states or states[-1] != state:
                states.append(state)
            await asyncio.sleep(0.2)
        bridge.network.set_own(True)
        # A GetStatus in flight when the session ends answers `ended` before this client has
        # read the stream's end: that is the end itself, not a state the session went through.
        if states and states[-1] == "ended" and flow.ended is not None:
            states.pop()
        check(flow.ended is not None, "the stream did not end within 180 s of a dead network")
        code, reason = flow.ended
        result("real_gives_up_after_s", f"{time.monotonic() - t0:.1f}")
        result("real_gives_up_stream", f"{code.name} {reason}")
        result("real_gives_up_states", ",".join(str(s) for s in states))
        await flow.stop()
        health = await bctx.stub.HealthCheck(bctx.pb.HealthCheckRequest())
        result("real_gives_up_sessions_left", health.active_sessions)
        status = await bctx.stub.GetStatus(bctx.pb.BridgeStatusRequest(user_id=user))
        result("real_gives_up_reason", repr(status.last_disconnect_reason))
        check(not status.connected, "GetStatus says connected")
        for _ in range(100):
            _, threads = bridge.status_of()
            if threads <= threads_before:
                break
            await asyncio.sleep(0.1)
        result("real_gives_up_threads_before_after", f"{threads_before} {threads}")
    finally:
        await let_go(phone, bctx, bridge)


async def real_key_rotated(ctx: RealCtx):
    """The server restarted with its key's secret rotated while a session is in the room: the
    library's rejoin is refused (its token was signed with the old secret), and the stream ends
    UNAVAILABLE saying the token was refused, for the backend to rejoin with a fresh one; a
    join with a token signed with the new secret works."""
    user = "rot"
    phone = await phone_for(user)
    flow = await TwoWay.flowing(ctx, user, phone)
    await phone.leave()
    flow.stop_sending()
    rotated = livekit_server.SECRET[::-1]
    await ctx.sfu.stop("kill")
    t0 = time.monotonic()
    await ctx.sfu.start(secret=rotated)
    try:
        for _ in range(600):
            if flow.ended is not None:
                break
            await asyncio.sleep(0.1)
        check(flow.ended is not None, "the stream did not end within 60 s")
        code, reason = flow.ended
        result("real_key_rotated_ended_after_ms", f"{(time.monotonic() - t0) * 1000:.0f}")
        status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
        result("real_key_rotated_stream", f"{code.name} {reason}")
        result("real_key_rotated_reason", repr(status.last_disconnect_reason))
        await flow.stop()
        r = await ctx.join(user, tok=token(f"cloud-agent:{user}", user, secret=rotated))
        result("real_key_rotated_rejoined", "joined" if r.success else f"refused: {r.error}")
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    finally:
        await ctx.sfu.stop("kill")
        await ctx.sfu.start()


SCENARIOS = {
    "real_gives_up": real_gives_up,
    "real_two_bridges": real_two_bridges,
    "real_key_rotated": real_key_rotated,
    "real_server_shutdown": real_server_shutdown,
    "real_end_table": real_end_table,
}
