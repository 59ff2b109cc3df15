"""The room as LiveKit's server sees it: participant counts and the bridge's permissions."""

import asyncio

import grpc
from livekit import api

from harness.audio import heard_span, tone, wav
from harness.backend import Files, joined_hearing, RealCtx, wait_for_count
from harness.phones import phone_for
from harness.report import check, result


async def real_participants(ctx: RealCtx):
    """participant_count, in JoinRoom's answer and in GetStatus, follows LiveKit's room: the
    bridge and the phone, then a visitor joining and leaving."""
    user = "pia"
    phone = await phone_for(user, listen=False)
    try:
        r = await ctx.joined(user)
        counts = [r.participant_count]
        visitor = await phone_for(user, "visitor", listen=False)
        counts.append(await wait_for_count(ctx, user, 3))
        await visitor.leave()
        counts.append(await wait_for_count(ctx, user, 2))
        result("real_participant_count_followed", "->".join(map(str, counts)))
        check(counts == [2, 3, 2], f"participant_count went {counts}")
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    finally:
        await phone.leave()


async def real_permissions(ctx: RealCtx):
    """UpdateParticipant on the bridge's identity, as an operator or a moderation service would.
    Publishing revoked: the server takes the bridge's track out of the room, and PlayAudio fails
    at once saying why (it would otherwise complete into a track nobody hears); given back, the
    next PlayAudio publishes the track anew and the phone hears it. Subscribing revoked and given
    back. Through all of it the phone's data packets keep arriving and the stream stays open."""
    user = "pia"
    ident = f"cloud-agent:{user}"
    target = await phone_for(user)
    lk = ctx.sfu.api()
    files = Files({"tone.wav": ("audio/wav", wav(tone(440, 1.0)))})

    async def permit(**grants):
        full = dict(can_subscribe=True, can_publish=True, can_publish_data=True)
        full.update(grants)
        await lk.room.update_participant(api.UpdateParticipantRequest(
            room=user, identity=ident, permission=api.ParticipantPermission(**full)))
        await asyncio.sleep(1.0)

    async def play(rid, track):
        name = "tts" if track == 2 else f"track-{track}"
        before = len(target.samples(name))
        kinds = []
        async for e in ctx.stub.PlayAudio(ctx.pb.PlayAudioRequest(
                request_id=rid, audio_url=files.url("tone.wav"), user_id=user, track_id=track)):
            kinds.append(ctx.pb.PlayAudioEvent.EventType.Name(e.type)
                         + (f"({e.error})" if e.error else ""))
        await asyncio.sleep(1.0)
        return kinds, heard_span(target.samples(name)[before:])[0]

    async def packets_in(seconds):
        before = len(got)
        await target.send_microphone(seconds)
        await asyncio.sleep(0.5)
        return len(got) - before

    try:
        call, queue = await joined_hearing(ctx, user, target)
        got = []

        async def reader():
            while (chunk := await call.read()) != grpc.aio.EOF:
                got.append(chunk)
        reading = asyncio.ensure_future(reader())
        result("perm_packets_in_1s_granted", await packets_in(1.0))
        kinds, heard = await play("p0", 2)
        result("perm_play_granted", f"{kinds[-1]} heard {heard:.2f} s")
        await permit(can_publish=False)
        kinds, heard = await play("p1", 2)
        result("perm_play_publish_revoked", f"{kinds[-1]} heard {heard:.2f} s")
        check(kinds[-1].startswith("FAILED") and "permission to publish" in kinds[-1] and heard == 0,
              f"publishing revoked: {kinds}, heard {heard:.2f} s")
        result("perm_packets_in_1s_publish_revoked", await packets_in(1.0))
        await permit()
        kinds, heard = await play("p2", 2)
        result("perm_play_publish_restored", f"{kinds[-1]} heard {heard:.2f} s")
        check(kinds[-1] == "COMPLETED" and heard >= 0.95,
              f"publishing given back: {kinds}, heard {heard:.2f} s of 1 s")
        await permit(can_subscribe=False)
        result("perm_packets_in_1s_subscribe_revoked", await packets_in(1.0))
        await permit()
        result("perm_packets_in_1s_subscribe_restored", await packets_in(1.0))
        status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
        result("perm_connected_after", status.connected)
        result("perm_stream_open_after", not reading.done())
        check(status.connected and not reading.done(), "the session or its stream ended")
        reading.cancel()
        queue.put_nowait(None)
    finally:
        files.close()
        await target.leave()
        await lk.aclose()


SCENARIOS = {
    "real_participants": real_participants,
    "real_permissions": real_permissions,
}
