"""The target's Opus microphone track: heard whole, and followed through unpublish, republish,
a server-side mute and a new connection of the phone's."""

import asyncio
import time

import grpc
from livekit import api, rtc

from harness.audio import heard_span, heard_whole, pcm_of, tone
from harness.backend import Collector, participant_sid, RealCtx
from harness.bridge import metric
from harness.phones import phone_for
from harness.report import check, result


async def real_target_track(ctx: RealCtx):
    """The phone's microphone as an Opus track (published before the bridge joins): the bridge
    subscribes and the client hears 3 s of 440 Hz whole, at the sent level."""
    user = "fay"
    target = await phone_for(user)
    publication, feed = await target.publish_microphone(tone(440, 3.0))
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    await asyncio.sleep(1.0)  # subscribed
    stream = Collector(call)
    started = time.monotonic()
    await feed
    await stream.read_for(3.0)
    result("real_track_fed_s", f"{time.monotonic() - started:.2f}")
    heard_whole("real_track", pcm_of(stream.chunks), 3.0, 440, 0.05)
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await target.leave()


async def real_track_follows(ctx: RealCtx):
    """The target's microphone track followed with no backend call: unpublished, nothing
    arrives; republished (a new SID), heard whole again at its new pitch; muted from the server
    (MutePublishedTrack), nothing audible; unmuted, heard again. A second microphone track
    published beside it: only the latest is heard (two in one ring would interleave), on one
    stream. A LeaveRoom while it flows ends the stream OK `left`, and the room's track streams
    go with it."""
    user = "nia"
    target = await phone_for(user)
    lk = ctx.sfu.api()
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    stream = Collector(call)
    read_for = stream.read_for
    publication, feed = await target.publish_microphone(tone(440, 2.0))
    await asyncio.sleep(1.0)  # subscribed
    first = heard_span(pcm_of(await stream.during(feed)))
    await target.room.local_participant.unpublish_track(publication.sid)
    # What was in flight at the unpublish may still come (and the decoder's tail fades out);
    # nothing loud after that.
    await read_for(0.2)
    after_unpublish = [c for c in await read_for(1.0)
                       if heard_span(pcm_of([c]))[0] > 0]
    publication, feed = await target.publish_microphone(tone(660, 2.0), name="microphone-2")
    await asyncio.sleep(1.0)  # subscribed
    second = heard_span(pcm_of(await stream.during(feed)))
    # A muted track sends nothing audible; the server tells the publisher to stop.
    feeding = asyncio.ensure_future(target._feed(target.source, tone(880, 10.0)))
    await asyncio.sleep(1.0)
    await lk.room.mute_published_track(api.MuteRoomTrackRequest(
        room=user, identity=target.identity, track_sid=publication.sid, muted=True))
    await asyncio.sleep(0.5)
    muted = heard_span(pcm_of(await read_for(1.5)))
    await lk.room.mute_published_track(api.MuteRoomTrackRequest(
        room=user, identity=target.identity, track_sid=publication.sid, muted=False))
    await asyncio.sleep(0.5)
    unmuted = heard_span(pcm_of(await read_for(1.5)))
    streams_one = metric("livekit_bridge_track_streams")
    _, feed = await target.publish_microphone(tone(330, 6.0), name="microphone-3")
    feeding_latest = asyncio.ensure_future(feed)
    await asyncio.sleep(1.0)  # subscribed to the latest, the other let go
    latest = heard_span(pcm_of(await read_for(1.5)))
    streams_two = metric("livekit_bridge_track_streams")
    queue.put_nowait(None)  # half-closed, as the backend does before an end it expects
    left = await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    check(left.success, f"LeaveRoom: {left}")
    await asyncio.wait_for(stream.task, 10)
    await asyncio.sleep(0.5)
    streams_left = metric("livekit_bridge_track_streams")
    feeding.cancel()
    feeding_latest.cancel()
    result("real_follow_first", f"{first[0]:.2f}s {first[1]:.0f}Hz")
    result("real_follow_after_unpublish_loud_chunks", len(after_unpublish))
    result("real_follow_republished", f"{second[0]:.2f}s {second[1]:.0f}Hz")
    result("real_follow_muted_loud_s", f"{muted[0]:.2f}")
    result("real_follow_unmuted", f"{unmuted[0]:.2f}s {unmuted[1]:.0f}Hz")
    result("real_follow_latest_of_two", f"{latest[0]:.2f}s {latest[1]:.0f}Hz")
    result("real_follow_track_streams_one_two_left", f"{streams_one:.0f}/{streams_two:.0f}/"
           f"{streams_left:.0f}")
    code, reason = stream.ended
    result("real_follow_leave_during_flow", f"{code.name} {reason}")
    # A talk spurt after the track sat silent can lose its first few tens of milliseconds
    # between the phone's encoder and the decoder (measured 30-50 ms); more would be a gap.
    check(abs(first[0] - 2.0) <= 0.08 and abs(first[1] - 440) < 3, f"first track heard {first}")
    check(not after_unpublish, f"{len(after_unpublish)} loud chunks after the unpublish")
    check(abs(second[0] - 2.0) <= 0.08 and abs(second[1] - 660) < 3, f"republished {second}")
    check(muted[0] < 0.1, f"{muted[0]:.2f} s audible while muted")
    check(unmuted[0] > 1.0 and abs(unmuted[1] - 880) < 5, f"unmuted {unmuted}")
    check(latest[0] > 1.0 and abs(latest[1] - 330) < 3, f"the latest of two tracks: {latest}")
    check((streams_one, streams_two, streams_left) == (1, 1, 0),
          f"track streams {streams_one}/{streams_two}/{streams_left} (one, two tracks, left)")
    check(code == grpc.StatusCode.OK and reason == "left", f"the stream ended {code} {reason}")
    await target.leave()
    await lk.aclose()


async def real_target_new_sid(ctx: RealCtx):
    """The phone connects again from elsewhere (a phone changing networks): its new connection
    takes over its identity with a new participant SID, the server drops the old one, and its
    audio keeps reaching the client with no call from the backend."""
    user = "roam"
    old = await phone_for(user, listen=False)
    await ctx.joined(user)
    flow_call, queue = ctx.stream(user)
    stream = Collector(flow_call)
    await asyncio.sleep(0.5)
    await old.send_microphone(1.0)
    check(len(stream.chunks) >= 90, f"only {len(stream.chunks)} of 100 packets before roaming")
    sid = await participant_sid(ctx, user, f"phone-{user}")
    new = await phone_for(user, listen=False)
    t0 = time.monotonic()
    sending = asyncio.ensure_future(new.send_microphone(3.0, start_seq=100))
    after = await stream.during(sending)
    after_sid = await participant_sid(ctx, user, f"phone-{user}")
    first = next((at - t0 for at, _ in after), None)
    result("real_target_new_sid_first_frame_ms", "never" if first is None else f"{first * 1000:.0f}")
    result("real_target_new_sid_frames", f"{len(after)} of 300")
    result("real_target_new_sid_old_phone", "still in" if old.disconnected is None
           else rtc.DisconnectReason.Name(old.disconnected))
    check(after_sid not in (None, sid), f"the phone's SID did not change: {sid} -> {after_sid}")
    check(stream.ended is None, f"the stream ended: {stream.ended}")
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await new.leave()


SCENARIOS = {
    "real_track_follows": real_track_follows,
    "real_target_new_sid": real_target_new_sid,
    "real_target_track": real_target_track,
}
