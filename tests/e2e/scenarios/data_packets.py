"""The phone's microphone as data packets: byte-exact after the payload rule, only the target's,
and how they share the stream with the target's track."""

import asyncio
import time

from harness.audio import is_data, payload_rule, tone
from harness.backend import Collector, let_go, own_bridge, read_chunks, RealCtx
from harness.phones import phone_for, send_marked
from harness.report import check, result


async def real_data_packets(ctx: RealCtx):
    """The phone's microphone as data packets reaches the client byte-exact after the payload
    rule, every one of them, while three other participants in the room send data packets of
    their own and publish tracks: a real SFU forwards everyone's, and only the target's are the
    user's audio. Reliable packets without a topic count; packets with a topic do not."""
    user = "dana"
    target = await phone_for(user)
    others = [await phone_for(user, f"visitor-{n}", listen=False) for n in range(3)]
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
    want = [w for w in (payload_rule(p) for p in sent + odd) if w]
    got = [c.pcm_data for c in await read_chunks(call, len(want), timeout=10)]
    # The reliable channel is another SCTP stream, with no order against the lossy one, so the
    # reliable packet goes once the lossy ones are in, and then one with a topic.
    await target.send_data(b"\x01" + bytes(320), reliable=True)
    await target.send_data(b"\x02" + bytes(320), topic="chat")
    want.append(payload_rule(b"\x01" + bytes(320)))
    got += [c.pcm_data for c in await read_chunks(call, 1, timeout=10)]
    elapsed = time.monotonic() - started
    for n in noise:
        await n
    differ = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    check(got == want, f"{len(differ)} of {len(want)} chunks differ, at {differ[:10]}")
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


async def real_track_and_data(ctx: RealCtx):
    """With BRIDGE_AUDIO_SOURCE=both (the default), the phone's data packets win while they
    flow: the client gets only them, never a frame of its Opus track between them, and the
    track takes over once they stop."""
    user = "both"
    phone = await phone_for(user, listen=False)
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    stream = Collector(call)
    await asyncio.sleep(0.5)
    stop = asyncio.Event()
    sender = asyncio.ensure_future(send_marked(phone, 100_000, stop))
    await asyncio.sleep(1.0)
    _, feed = await phone.publish_microphone(tone(440, 10.0))
    feeding = asyncio.ensure_future(feed)
    await asyncio.sleep(3.0)
    stop.set()
    await sender
    stopped = time.monotonic()
    await asyncio.sleep(2.0)
    kinds = "".join("D" if is_data(c) else "T" for _, c in stream.chunks)
    switches = sum(1 for a, b in zip(kinds, kinds[1:]) if a != b)
    first_track = next((at for at, c in stream.chunks if not is_data(c)), None)
    result("real_both_data_chunks", kinds.count("D"))
    result("real_both_track_chunks", kinds.count("T"))
    result("real_both_switches", switches)
    check(first_track is not None, "the track never took over")
    result("real_both_track_after_data_ms", f"{(first_track - stopped) * 1000:.0f}")
    check(kinds.startswith("D") and switches == 1,
          f"data and track audio interleaved ({switches} switches)")
    feeding.cancel()
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await phone.leave()


async def real_audio_source_settings(ctx: RealCtx):
    """BRIDGE_AUDIO_SOURCE=track takes the phone's track only, also one published before the
    bridge joined, and ignores its data packets; =data never hears the track, during the
    data packets or after them."""
    for setting in ("track", "data"):
        bridge, bctx = await own_bridge(ctx, {"BRIDGE_AUDIO_SOURCE": setting})
        user = f"src{setting}"
        phone = await phone_for(user, listen=False)
        try:
            _, feed = await phone.publish_microphone(tone(440, 10.0))
            feeding = asyncio.ensure_future(feed)
            await bctx.joined(user)
            call, queue = bctx.stream(user)
            stream = Collector(call)
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            await send_marked(phone, 200)
            await asyncio.sleep(1.0)  # with `both` the track would take over now
            got = [c for at, c in stream.chunks if at >= t0]
            data = sum(1 for c in got if is_data(c))
            result(f"real_source_{setting}_data_chunks", data)
            result(f"real_source_{setting}_track_chunks", len(got) - data)
            feeding.cancel()
            queue.put_nowait(None)
        finally:
            await let_go(phone, bctx, bridge)


SCENARIOS = {
    "real_track_and_data": real_track_and_data,
    "real_audio_source_settings": real_audio_source_settings,
    "real_data_packets": real_data_packets,
}
