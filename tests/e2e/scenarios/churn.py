"""The crash that started the project, on LiveKit's server: sessions left, replaced, abandoned and
removed by the server while audio flows both ways, with nothing delivered after a close."""

import asyncio
import os
import time

import grpc
from livekit import api

from harness.audio import Pacer, tone
from harness.backend import participant_sid, read_chunks, RealCtx
from harness.bridge import metric, thread_names
from harness.phones import phone_for
from harness.report import check, result

# How each way of ending a session ends its stream, as the backend sees it (the client's own
# cancel ends it at the client, with no status from the bridge).
ENDS = {"leave": (grpc.StatusCode.OK, "left"), "replace": (grpc.StatusCode.OK, "replaced"),
        "remove": (grpc.StatusCode.OK, "removed"), "cancel": None}


class _Checked(list):
    """A closed stream's chunks, each checked as it arrives."""

    def __init__(self, check_chunk):
        super().__init__()
        self.check_chunk = check_chunk

    def append(self, item):
        self.check_chunk(item[1])


async def churn_cycles(ctx, user, cycles, join, generation, fits, sent, tag,
                       ways=("leave", "replace", "cancel"), remove=None, speak=None,
                       settle=None):
    """The crash regression's cycles, against either server: `cycles` sessions of `user`, each
    ended in turn by one of `ways`: left (LeaveRoom), replaced (a new JoinRoom), abandoned (the
    client cancels) or removed by the server (`remove()`), while the caller's pump sends
    packets tagged with a join number. Each session's stream must get three packets and, once
    it has ended, nothing more; `fits(packet_tag, generation())` says whether a packet may
    reach the stream of that join. `speak(queue)`, if given, runs before each session ends
    (audio the other way). `join()` joins again; `settle()` (by default 2 s) waits after the
    last leave. Reports the figures under `tag` and returns (RSS and threads at the start, RSS
    after a quarter of the cycles, RSS and threads once settled)."""
    def checker(i, join_number, closed):
        def checked(chunk):
            got = int.from_bytes(chunk.pcm_data[:4], "little")
            check(fits(got, join_number), f"cycle {i}: the {'closed ' if closed else ''}stream "
                  f"of join {join_number} delivered a packet tagged with join {got}")
        return checked

    async def read_end(call, i, number):
        """The stream read to its end, every chunk checked: its (status, reason)."""
        into = _Checked(checker(i, number, closed=True))
        try:
            while (chunk := await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
                into.append((0, chunk))
            trailers, code = await call.trailing_metadata(), await call.code()
        except grpc.aio.AioRpcError as e:
            trailers, code = e.trailing_metadata(), e.code()
        except asyncio.CancelledError:
            return None
        return code, dict(trailers or ()).get("x-bridge-end-reason")

    await join()
    await asyncio.sleep(0.5)
    base_rss, base_threads = ctx.bridge.status_of()
    frames, rss_quarter, started = 0, base_rss, time.monotonic()
    ends = {}
    for i in range(cycles):
        if i == cycles // 4:
            rss_quarter, _ = ctx.bridge.status_of()
        number = generation()
        call, queue = ctx.stream(user)
        checked = checker(i, number, closed=False)
        for chunk in await read_chunks(call, 3, timeout=15):
            checked(chunk)
        frames += 3
        if speak is not None:
            await speak(queue)
        way = ways[i % len(ways)]
        if way == "cancel":
            call.cancel()  # the client goes away: its session closes
            await asyncio.sleep(0.05)
        else:
            queue.put_nowait(None)  # half-closed, as the backend does before an end it expects
        if way == "leave":
            r = await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="churn"))
            check(r.success, r.error)
        if way == "remove":
            # The server's removal is the session's end: the next join waits for it, or it
            # would replace the session first.
            await remove()
            end = await read_end(call, i, number)
            await join()
        else:
            await join()  # the replacement, or the next session while the old one closes
            end = await read_end(call, i, number)
        check(ENDS[way] is None or end == ENDS[way],
              f"cycle {i}: a session ended by {way} ended its stream {end}")
        ends[way] = ends.get(way, 0) + 1
    took = time.monotonic() - started
    r = await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    check(r.success, r.error)
    await (settle() if settle is not None else asyncio.sleep(2.0))
    rss, threads = ctx.bridge.status_of()
    result(f"{tag}_cycles", cycles)
    result(f"{tag}_ends", " ".join(f"{way} {n}" for way, n in ends.items()))
    result(f"{tag}_cycle_ms", f"{took / cycles * 1000:.0f}")
    result(f"{tag}_frames_checked", frames)
    result(f"{tag}_packets_sent", sent["n"])
    result(f"{tag}_rss_kib_start_quarter_end", f"{base_rss}/{rss_quarter}/{rss}")
    result(f"{tag}_threads_start_end", f"{base_threads}/{threads}")
    check(ctx.bridge.proc.poll() is None, "the bridge died")
    check(threads <= base_threads, f"threads {base_threads} -> {threads}")
    return base_rss, base_threads, rss_quarter, rss, threads


async def real_churn(ctx: RealCtx, cycles: int):
    """The crash that started the project, on LiveKit's server: the session left, replaced,
    abandoned by its client and removed by the server (RemoveParticipant), a quarter of the
    cycles each, while the phone sends 500 data packets a second and the backend speaks:
    each session's stream gets the phone's packets and the phone hears the session's track
    before the session ends. Each packet carries the number of the bridge's join that had
    completed when it was sent. A join completes only once the session it replaces is closed,
    and LiveKit stops forwarding to a replaced participant before the newer one is in, so a
    stream that delivers a packet tagged with a later join got the newer room's audio after its
    close (a fault in routing by room). No panic; every stream ends as the end table says;
    memory and threads end where they started, no WebRTC runtime left (a removal while the
    bridge publishes can strand one, which the bridge retires with its worker). (The mock's
    `churn` tags a packet with the join the SFU sends it to, which also catches a packet of an
    older session in a newer one; a real SFU forwards to whoever is in the room.)"""
    user = "cory"
    phone = await phone_for(user)
    lk = ctx.sfu.api()
    joins = {"done": 0}
    stop = asyncio.Event()
    sent = {"n": 0}
    heard = {"sessions": 0, "waited": []}
    retired = 'livekit_bridge_room_worker_exits_total{kind="retired"}'
    retired_before = metric(retired)

    async def pump():
        """Five packets every 10 ms, five times a phone's rate, on a clock, which leaves the
        phone's event loop room for the track it hears (sending flat out took its whole core
        and delivered the library's events late)."""
        pacer = Pacer(0.01)
        while not stop.is_set():
            tag = joins["done"].to_bytes(4, "little")
            for _ in range(5):
                await phone.send_data(b"\x00" + tag + bytes(316))
                sent["n"] += 1
            await pacer.tick()

    async def join():
        await ctx.joined(user)
        joins["done"] += 1

    async def speak(queue):
        """The backend's tone, 100 ms a chunk in real time, until the phone hears this
        session's participant (at most 10 s)."""
        sid = await participant_sid(ctx, user)
        pcm, pacer, t0 = tone(440, 0.1), Pacer(), time.monotonic()
        while not phone.heard_loud_from(sid):
            if time.monotonic() - t0 > 10:
                # Who failed: the server's view of the room says whether the bridge published.
                ps = await lk.room.list_participants(api.ListParticipantsRequest(room=user))
                room = [(p.identity, p.sid, [(t.sid, t.muted) for t in p.tracks])
                        for p in ps.participants]
                check(False, f"session {joins['done']} ({sid}): the phone heard nothing of it "
                      f"in 10 s; the room holds {room}; the phone subscribed to "
                      f"{len(phone.heard_from)} participants")
            queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=pcm, sample_rate=16000,
                                               channels=1))
            await pacer.tick()
        heard["sessions"] += 1
        heard["waited"].append(time.monotonic() - t0)

    async def remove():
        await lk.room.remove_participant(api.RoomParticipantIdentity(
            room=user, identity=f"cloud-agent:{user}"))

    def runtimes():
        return thread_names(ctx.bridge.proc.pid).get("network_thread", 0)

    async def settle():
        """Until no WebRTC runtime is left (a stranded one goes with the worker the bridge
        retires for it: two looks 2 s apart, then its exit), at most 20 s, and 2 s more."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and runtimes():
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)

    pumper = asyncio.ensure_future(pump())
    try:
        await churn_cycles(ctx, user, cycles, join, lambda: joins["done"],
                           lambda got, want: got <= want, sent, "real_churn",
                           ways=("leave", "replace", "cancel", "remove"), remove=remove,
                           speak=speak, settle=settle)
        waited = sorted(heard["waited"])
        result("real_churn_sessions_heard_by_phone", f"{heard['sessions']} of {cycles}")
        result("real_churn_heard_after_ms_p50_max",
               f"{waited[len(waited) // 2] * 1000:.0f}/{waited[-1] * 1000:.0f}")
        result("real_churn_runtimes_left", runtimes())
        result("real_churn_workers_retired", int(metric(retired) - retired_before))
        check(runtimes() == 0, f"{runtimes()} WebRTC runtimes left")
    finally:
        stop.set()
        pumper.cancel()
        await phone.leave()
        await lk.aclose()


SCENARIOS = {
    "real_churn": lambda ctx: real_churn(ctx, int(os.environ.get("E2E_CYCLES", "300"))),
}
