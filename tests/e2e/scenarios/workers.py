"""Room workers: a worker process killed as a fault inside LiveKit's library would kill it
(SIGSEGV, SIGABRT, SIGKILL) ends that worker's sessions, and only those, UNAVAILABLE
`room_lost` within a second, naming the signal; the backend rejoins them and hears audio again;
every other session loses no frame."""

import asyncio
import os
import signal
import time

import grpc

from harness.backend import own_bridge
from harness.bridge import alive_pid, workers_of
from harness.phones import phone_for
from harness.report import check, result


class Listener:
    """One user's StreamAudio, read on a task of its own: each chunk's arrival and the count
    the phone put in its first sample, and how the stream ended (code, end reason, details)."""

    def __init__(self, bctx, user):
        self.call, self.queue = bctx.stream(user)
        self.frames = []  # (arrival, count)
        self.ended = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            async for chunk in self.call:
                pcm = chunk.pcm_data
                self.frames.append((time.monotonic(), int.from_bytes(pcm[:2], "little")))
            trailers, code, details = (await self.call.trailing_metadata(),
                                       await self.call.code(), await self.call.details())
        except grpc.aio.AioRpcError as e:
            trailers, code, details = e.trailing_metadata(), e.code(), e.details()
        self.ended = (time.monotonic(), code, dict(trailers or ()).get("x-bridge-end-reason"),
                      details or "")

    def lost_between(self, t0, t1):
        """Frames missing from the phone's count among those that arrived in [t0, t1], and the
        longest gap between arrivals there (ms)."""
        got = [(at, n) for at, n in self.frames if t0 <= at <= t1]
        if len(got) < 2:
            return None, None
        lost = sum((b - a - 1) % 32768 for (_, a), (_, b) in zip(got, got[1:]))
        gap = max(b - a for (a, _), (b, _) in zip(got, got[1:]))
        return lost, gap * 1000

    def close(self):
        self.queue.put_nowait(None)


async def real_worker_faults(ctx, users=12, workers=4):
    """`users` sessions on `workers` room workers, each phone sending its microphone as data
    packets (100 a second, counted) and each client streaming PCM into the room; one worker is
    killed with each signal in turn."""
    bridge, bctx = await own_bridge(ctx, {"BRIDGE_ROOM_WORKERS": str(workers)})
    names = [f"wf{n}" for n in range(users)]
    phones = {u: await phone_for(u, listen=False) for u in names}
    stop = asyncio.Event()

    async def microphone(phone):
        n = 0
        while not stop.is_set():
            await phone.send_microphone(1.0, start_seq=n)
            n += 100

    async def client_audio(queue, user):
        pcm = bytes(3200)
        t0 = time.monotonic()
        n = 0
        while not stop.is_set():
            queue.put_nowait(bctx.pb.AudioChunk(user_id=user, pcm_data=pcm, sample_rate=16000,
                                                channels=1))
            n += 1
            await asyncio.sleep(max(0, t0 + n * 0.1 - time.monotonic()))

    feeds = [asyncio.ensure_future(microphone(p)) for p in phones.values()]
    listeners, uplinks = {}, {}
    seen = set()  # every worker pid seen, to check none outlives the bridge

    async def attach(user):
        r = await bctx.joined(user)
        check(r.success, f"{user}: {r.error}")
        listeners[user] = Listener(bctx, user)
        uplinks[user] = asyncio.ensure_future(client_audio(listeners[user].queue, user))

    try:
        for u in names:
            await attach(u)
        for _ in range(100):
            if len(workers_of(bridge.proc.pid)) == workers:
                break
            await asyncio.sleep(0.05)
        check(len(workers_of(bridge.proc.pid)) == workers,
              f"{len(workers_of(bridge.proc.pid))} room workers running, not {workers}")
        await asyncio.sleep(2.0)
        for u, li in listeners.items():
            check(len(li.frames) > 50, f"{u}: {len(li.frames)} frames before any fault")
        # The same window with no fault: the gaps the phones and this client make themselves.
        t_quiet = time.monotonic() - 2.5
        quiet = [li.lost_between(t_quiet, t_quiet + 2.5) for li in listeners.values()]
        result("real_worker_no_fault_frames_lost", max(n for n, _ in quiet))
        result("real_worker_no_fault_max_gap_ms", round(max(g for _, g in quiet)))
        for sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL):
            tag = f"real_worker_{sig.name}"
            before = workers_of(bridge.proc.pid)
            seen.update(before)
            victim = before[0]
            t_kill = time.monotonic()
            os.kill(victim, sig)
            # Its sessions end (at most 5 s is waited for the first), then the others have
            # 2 s in which to show a gap.
            for _ in range(100):
                if any(li.ended is not None for li in listeners.values()):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(max(0.0, t_kill + 2.0 - time.monotonic()))
            lost = {u: li for u, li in listeners.items() if li.ended is not None}
            kept = {u: li for u, li in listeners.items() if li.ended is None}
            check(0 < len(lost) < users, f"{tag}: {len(lost)} of {users} sessions ended")
            result(f"{tag}_sessions_lost", len(lost))
            latest, hidden = 0.0, 0
            for u, li in lost.items():
                at, code, reason, details = li.ended
                latest = max(latest, at - t_kill)
                if code == grpc.StatusCode.INTERNAL and reason is None:
                    # grpcio's asyncio client hides the status when one of its writes races
                    # the stream's end (docs/backend.md, the client caveat), and this client
                    # writes all the time; the session's own record says how it ended.
                    hidden += 1
                    status = await bctx.stub.GetStatus(bctx.pb.BridgeStatusRequest(user_id=u))
                    code, reason = grpc.StatusCode.UNAVAILABLE, "room_lost"
                    details = status.last_disconnect_reason
                    check(details.startswith("room lost: "), f"{tag}: {u} ended {details!r}")
                check((code, reason) == (grpc.StatusCode.UNAVAILABLE, "room_lost"),
                      f"{tag}: {u} ended {code} {reason}")
                check("worker process" in details and sig.name in details,
                      f"{tag}: {u} ended saying {details!r}")
            result(f"{tag}_status_hidden_by_grpcio", hidden)
            result(f"{tag}_end_after_ms", round(latest * 1000))
            result(f"{tag}_end_says", next(iter(lost.values())).ended[3])
            worst_lost, worst_gap = 0, 0.0
            for u, li in kept.items():
                missing, gap = li.lost_between(t_kill - 0.5, t_kill + 2.0)
                check(missing is not None, f"{tag}: {u} received nothing around the fault")
                worst_lost, worst_gap = max(worst_lost, missing), max(worst_gap, gap)
            result(f"{tag}_others_frames_lost", worst_lost)
            result(f"{tag}_others_max_gap_ms", round(worst_gap))
            # A replacement is running; the lost users rejoin as the backend does after an error
            # status, and hear their phones again.
            after = workers_of(bridge.proc.pid)
            check(len(after) == workers and victim not in after,
                  f"{tag}: workers {before} -> {after}")
            t_rejoin = time.monotonic()
            for u, li in lost.items():
                uplinks.pop(u).cancel()
                li.close()
                await attach(u)
            back = 0.0
            for u in lost:
                li = listeners[u]
                for _ in range(100):
                    if li.frames:
                        break
                    await asyncio.sleep(0.05)
                check(li.frames, f"{tag}: {u} heard nothing after rejoining")
                back = max(back, li.frames[0][0] - t_rejoin)
            result(f"{tag}_rejoined_audio_after_ms", round(back * 1000))
            await asyncio.sleep(1.0)
        for u in names:
            r = await bctx.stub.LeaveRoom(bctx.pb.LeaveRoomRequest(user_id=u, reason="done"))
            check(r.success, f"LeaveRoom {u}: {r}")
        for li in listeners.values():
            li.close()
        await asyncio.sleep(1.0)
        ends = {li.ended[2] if li.ended else None for li in listeners.values()}
        check(ends == {"left"}, f"streams ended {ends}")
        check(len(workers_of(bridge.proc.pid)) == workers, "the workers outlive their sessions")
    finally:
        stop.set()
        for t in feeds + list(uplinks.values()):
            t.cancel()
        for p in phones.values():
            await p.leave()
        await bctx.channel.close()
        seen.update(workers_of(bridge.proc.pid))
        code = bridge.stop()
        for _ in range(40):
            alive = [p for p in seen if alive_pid(p)]
            if not alive:
                break
            await asyncio.sleep(0.05)
        check(not alive, f"room workers {alive} outlived the bridge")
        result("real_worker_bridge_exit", code)


SCENARIOS = {
    "real_worker_faults": real_worker_faults,
}
