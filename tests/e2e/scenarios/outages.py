"""Outages while audio flows both ways: the bridge's link, the phone's link, the server killed and
restarted. The stream stays open, the library resumes or rejoins, and audio comes back both
ways; what was lost is counted."""

import asyncio
import time

from harness.audio import loud, Pacer, tone
from harness.backend import (
    Collector, let_go, own_bridge, participant_sid, RealCtx, stream_end, TwoWay)
from harness.network import link_down
from harness.phones import NetPhone, phone_for
from harness.report import check, result


async def real_outage(ctx: RealCtx, seconds: float):
    """The bridge's own link to LiveKit down for `seconds` while audio flows both ways: the
    stream stays open, the library resumes the session with the real server (an ICE restart,
    which the mock could never do), and audio comes back both ways."""
    bridge, bctx = await own_bridge(ctx)
    user = f"out{int(seconds)}"
    phone = await phone_for(user)
    try:
        flow = await TwoWay.flowing(bctx, user, phone)
        await asyncio.sleep(1)
        sid = await participant_sid(ctx, user)
        t_down, t_up = await link_down(bridge.network, seconds)
        down, up = await flow.back_since(t_up, 60)
        await asyncio.sleep(1)
        tag = f"real_outage_{int(seconds)}s"
        during = [at for at, _ in flow.got if t_down + 0.5 < at < t_up]
        result(f"{tag}_downlink_back_ms", "never" if down is None else f"{down * 1000:.0f}")
        result(f"{tag}_uplink_back_ms", "never" if up is None else f"{up * 1000:.0f}")
        result(f"{tag}_stream", "open" if flow.ended is None else f"{flow.ended}")
        after = await participant_sid(ctx, user)
        result(f"{tag}_resumed", "same participant" if after == sid else "rejoined in full")
        lost = flow.lost()
        result(f"{tag}_phone_frames_lost", lost)
        result(f"{tag}_phone_frames_sent", flow.sent)
        if down is not None:
            # Packets the phone sent while the link was down that came late, all at once.
            back = t_up + down
            burst = sum(1 for at, _ in flow.got if back <= at < back + 1.0)
            result(f"{tag}_chunks_in_the_first_second_back", burst)
        check(flow.ended is None, f"the stream ended: {flow.ended}")
        check(down is not None, "the phone's audio never reached the client again")
        # Lost: the outage and the time to notice the link is back; nothing more.
        check(lost * 0.01 <= (t_up - t_down) + down + 1.0, f"{lost} frames lost")
        check(up is not None, "the backend's audio never reached the phone again")
        check(not during, f"{len(during)} chunks arrived while the link was down")
        status = await bctx.stub.GetStatus(bctx.pb.BridgeStatusRequest(user_id=user))
        check(status.connected, "the session is not connected after the outage")
        await flow.stop()
    finally:
        await let_go(phone, bctx, bridge)


async def real_phone_outage(ctx: RealCtx, seconds: float):
    """The phone's link to LiveKit down for `seconds` while audio flows both ways: the phone's
    SDK resumes (or, once the server has let it go, rejoins as a new participant, which the
    bridge follows as the same target); the backend's stream stays open throughout, and audio
    comes back both ways."""
    user = f"pout{int(seconds)}"
    tag = f"real_phone_outage_{int(seconds)}s"
    phone = await NetPhone(user, ctx.bridge.tmp).start()
    try:
        await ctx.joined(user)
        call, queue = ctx.stream(user)
        got = []
        reader = asyncio.ensure_future(stream_end(call, into=got, timeout=None))

        async def backend():
            pcm, pacer = tone(440, 0.1), Pacer()
            while True:
                queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=pcm,
                                                   sample_rate=16000, channels=1))
                await pacer.tick()

        speaking = asyncio.ensure_future(backend())

        def got_since(t):
            return next((at - t for at, _ in got if at >= t), None)

        async def back_since(t, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if got_since(t) is not None and phone.heard_since(t) is not None:
                    break
                await asyncio.sleep(0.05)
            return got_since(t), phone.heard_since(t)

        down, up = await back_since(time.monotonic(), 15)
        check(down is not None and up is not None, f"audio never flowed both ways: {down} {up}")
        await asyncio.sleep(1)
        t_first = got[0][0]
        sid = await participant_sid(ctx, user, f"phone-{user}")
        t_down, t_up = await link_down(phone.network, seconds)
        down, up = await back_since(t_up, 60)
        await asyncio.sleep(2)
        after = await participant_sid(ctx, user, f"phone-{user}")
        result(f"{tag}_downlink_back_ms", "never" if down is None else f"{down * 1000:.0f}")
        result(f"{tag}_uplink_back_ms", "never" if up is None else f"{up * 1000:.0f}")
        result(f"{tag}_resumed", "same participant" if after == sid else "rejoined in full")
        result(f"{tag}_stream", "open" if not reader.done() else f"{reader.result()}")
        speaking.cancel()
        sent_before = phone.sent_at(t_first)
        sent = await phone.stop()
        await asyncio.sleep(1)
        received = len(got)
        lost = sent - sent_before - received
        result(f"{tag}_phone_frames_lost", f"{lost} of {sent - sent_before}")
        check(not reader.done(), f"the stream ended: {reader.result() if reader.done() else ''}")
        check(down is not None, "the phone's audio never reached the client again")
        check(up is not None, "the backend's audio never reached the phone again")
        # Lost: the outage and the time to notice the link is back, give or take a report.
        check(lost * 0.01 <= (t_up - t_down) + down + 1.0, f"{lost} frames lost")
        queue.put_nowait(None)
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    finally:
        await phone.stop()


async def real_track_outage(ctx: RealCtx, seconds: float):
    """The bridge's own link down for `seconds` while the target's Opus track flows: the
    stream stays open, the tone is heard again once the link is back, with no call from the
    backend, and nothing stale is heard meanwhile (the library's audio stream keeps its 10 ms
    pace with concealment fading to silence)."""
    bridge, bctx = await own_bridge(ctx)
    user = f"trk{int(seconds)}"
    tag = f"real_track_outage_{int(seconds)}s"
    phone = await phone_for(user, listen=False)
    try:
        _, feed = await phone.publish_microphone(tone(440, seconds + 25))
        feeding = asyncio.ensure_future(feed)
        await bctx.joined(user)
        call, queue = bctx.stream(user)
        stream = Collector(call)
        check(await stream.loud_since(0, 5) is not None, "the tone was never heard")
        await asyncio.sleep(1)
        sid = await participant_sid(ctx, user)
        t_down, t_up = await link_down(bridge.network, seconds)
        back = await stream.loud_since(t_up, 20)
        check(back is not None, "the tone was not heard within 20 s of the link coming back")
        after = await stream.read_for(2.0)
        # Half a second after the link went down, what was in flight has arrived.
        during = [c for at, c in stream.chunks if t_down + 0.5 <= at < t_up]
        after_sid = await participant_sid(ctx, user)
        result(f"{tag}_heard_again_after_link_up_ms", f"{back * 1000:.0f}")
        result(f"{tag}_chunks_during_outage", f"{len(during)} ({sum(map(loud, during))} loud)")
        result(f"{tag}_loud_chunks_in_2s_after", f"{sum(1 for _, c in after if loud(c))} of "
               f"{len(after)}")
        result(f"{tag}_resumed", "same participant" if after_sid == sid else "rejoined in full")
        check(not any(map(loud, during)), "the tone was heard while the link was down: stale")
        feeding.cancel()
        queue.put_nowait(None)
    finally:
        await let_go(phone, bctx, bridge)


async def real_server_restart(ctx: RealCtx):
    """LiveKit's server killed and started again with the same keys while audio flows both
    ways: the library's resume is refused (the new node knows no session) and it rejoins in
    full; audio comes back both ways on the same stream, with no call from the backend."""
    user = "lou"
    phone = await phone_for(user)
    flow = await TwoWay.flowing(ctx, user, phone)
    await ctx.sfu.stop("kill")
    t_killed = time.monotonic()
    await asyncio.sleep(1)
    await ctx.sfu.start()
    t_up = time.monotonic()
    # The phone is a client too: it rejoins the same way, by itself.
    down, up = await flow.back_since(t_up, 60)
    result("real_restart_downlink_back_ms", "never" if down is None else f"{down * 1000:.0f}")
    result("real_restart_uplink_back_ms", "never" if up is None else f"{up * 1000:.0f}")
    result("real_restart_stream", "open" if flow.ended is None else f"{flow.ended}")
    result("real_restart_server_down_ms", f"{(t_up - t_killed) * 1000:.0f}")
    result("real_restart_phone_frames_lost", f"{flow.lost()} of {flow.sent}")
    check(flow.ended is None, f"the stream ended: {flow.ended}")
    check(down is not None and up is not None, f"audio did not come back: {down} {up}")
    await flow.stop()
    await phone.leave()


async def real_track_after_restart(ctx: RealCtx):
    """LiveKit's server killed and started again while the target's track flows: the library
    rejoins in full, the phone republishes its track, and the bridge subscribes to it again
    and the tone is heard, with no call from the backend, on the same stream."""
    user = "retrack"
    phone = await phone_for(user, listen=False)
    _, feed = await phone.publish_microphone(tone(440, 90.0))
    feeding = asyncio.ensure_future(feed)
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    stream = Collector(call)
    check(await stream.loud_since(0, 10) is not None, "the tone was never heard")
    await ctx.sfu.stop("kill")
    await asyncio.sleep(1.0)
    await ctx.sfu.start()
    t_up = time.monotonic()
    back = await stream.loud_since(t_up, 60)
    check(back is not None, "the tone was not heard within 60 s of the server's restart")
    after = await stream.read_for(2.0)
    result("real_track_after_restart_heard_after_s", f"{back:.1f}")
    result("real_track_after_restart_loud_chunks_in_2s", f"{sum(1 for _, c in after if loud(c))} "
           f"of {len(after)}")
    result("real_track_after_restart_stream", "open" if stream.ended is None else stream.ended)
    feeding.cancel()
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await phone.leave()


SCENARIOS = {
    "real_outage_2s": lambda ctx: real_outage(ctx, 2.0),
    "real_outage_10s": lambda ctx: real_outage(ctx, 10.0),
    "real_outage_30s": lambda ctx: real_outage(ctx, 30.0),
    "real_phone_outage_5s": lambda ctx: real_phone_outage(ctx, 5.0),
    "real_phone_outage_30s": lambda ctx: real_phone_outage(ctx, 30.0),
    "real_server_restart": real_server_restart,
    "real_track_outage_5s": lambda ctx: real_track_outage(ctx, 5.0),
    "real_track_outage_20s": lambda ctx: real_track_outage(ctx, 20.0),
    "real_track_after_restart": real_track_after_restart,
}
