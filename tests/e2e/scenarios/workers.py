"""Room workers: a worker process killed as a fault inside LiveKit's library would kill it
(SIGSEGV, SIGABRT, SIGKILL) ends that worker's sessions, and only those, UNAVAILABLE
`room_lost` within a second, naming the signal; the backend's own client (grpc-js) rejoins them
as it does after an error status and hears audio again; every other session loses no frame."""

import asyncio
import os
import signal
import time

from harness.backend import own_bridge
from harness.bridge import alive_pid, stolen_seconds, workers_of
from harness.livekit_server import LiveKitServer, token
from harness.node_backend import NodeBackend
from harness.phones import GoPhones
from harness.report import check, result


async def real_worker_faults(ctx, users=20, workers=4):
    """`users` sessions on `workers` room workers, each user's phone (the Go phones) sending its
    microphone as data packets (100 a second, counted) and each user's backend (grpc-js, one
    client per user) streaming PCM into the room; one worker is killed with each signal in
    turn."""
    # The front's info lines on its workers say when each dead one was reaped.
    log = os.environ.get("BRIDGE_LOG", "warn") + ",livekit_bridge::room::worker::link=info"
    bridge, bctx = await own_bridge(ctx, {"BRIDGE_ROOM_WORKERS": str(workers), "RUST_LOG": log},
                                    metrics=True)

    def lost_by_the_bridge():
        """Room audio frames the bridge itself lost, every session's: pushed into a full ring,
        skipped as a backlog, or collided with another push. A frame that reached a worker's
        callback and is not counted here was delivered to its stream."""
        return sum(bridge.metric(f'livekit_bridge_frames_total{{outcome="{o}"}}')
                   for o in ("dropped_full", "dropped_contended"))

    phones = GoPhones(users, "wf", bridge.tmp)
    requests = [{"user_id": phones.room(i), "room_name": phones.room(i),
                 "token": token(f"cloud-agent:{phones.room(i)}", phones.room(i)),
                 "livekit_url": LiveKitServer.url, "target_identity": f"phone-{i}"}
                for i in range(users)]
    backend = NodeBackend(bridge.socket, requests, bridge.tmp)
    seen = set()  # every worker pid seen, to check none outlives the bridge
    try:
        await phones.start()
        await backend.start()
        for _ in range(100):
            if len(workers_of(bridge.proc.pid)) == workers:
                break
            await asyncio.sleep(0.05)
        check(len(workers_of(bridge.proc.pid)) == workers,
              f"{len(workers_of(bridge.proc.pid))} room workers running, not {workers}")
        await asyncio.sleep(6.0)
        # A window with no fault: the gaps the phones and the clients make themselves.
        t_quiet = time.monotonic() - 5.0
        quiet = await backend.window(t_quiet, t_quiet + 5.0)
        check(len(quiet) == users, f"{len(quiet)} of {users} users heard their phones")
        result("real_worker_users", users)
        result("real_worker_no_fault_frames_lost", max(w[0] for w in quiet.values()))
        result("real_worker_no_fault_max_gap_ms", max(w[1] for w in quiet.values()))
        for sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL):
            tag = f"real_worker_{sig.name}"
            before = workers_of(bridge.proc.pid)
            seen.update(before)
            victim = before[0]
            lost_before = lost_by_the_bridge()
            t_kill, wall_kill, stolen = time.monotonic(), time.time(), stolen_seconds()
            os.kill(victim, sig)
            # Its sessions end (at most 5 s is waited for the first), then the others have
            # until the backend rejoins the lost ones (2 s after their end) to show a gap.
            for _ in range(100):
                if backend.ended_since(t_kill):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(max(0.0, t_kill + 1.5 - time.monotonic()))
            lost = backend.ended_since(t_kill)
            check(0 < len(lost) < users, f"{tag}: {len(lost)} of {users} sessions ended")
            result(f"{tag}_sessions_lost", len(lost))
            for u, (at, code, reason, details) in lost.items():
                check((code, reason) == ("UNAVAILABLE", "room_lost"),
                      f"{tag}: {u} ended {code} {reason}")
                check("worker process" in details and sig.name in details,
                      f"{tag}: {u} ended saying {details!r}")
            result(f"{tag}_end_after_ms",
                   round((max(at for at, *_ in lost.values()) - t_kill) * 1000))
            result(f"{tag}_end_says", next(iter(lost.values()))[3])
            # Who was slow, if anyone: the front (when it logged the death), the test's client
            # (its event loop held up) or the whole machine (time the hypervisor took).
            died = bridge.logged_at(f"(pid {victim}) died")
            check(died is not None, f"{tag}: the bridge never logged the worker's death")
            result(f"{tag}_front_ended_after_ms", round((died - wall_kill) * 1000))
            # The others' gaps: over the whole window (the machine's, on two shared cores), and
            # those that overlap the worker's dying, from the kill until the front has ended its
            # sessions: a stall the death caused in the front is there.
            dying = (t_kill, t_kill + (died - wall_kill) + 0.1)
            window = await backend.window(t_kill - 0.5, t_kill + 1.5, during=dying)
            result(f"{tag}_client_lag_ms", backend.lag_ms)
            result(f"{tag}_stolen_ms", round((stolen_seconds() - stolen) * 1000))
            kept = [u for u in requests if u["user_id"] not in lost]
            for u in kept:
                check(u["user_id"] in window,
                      f"{tag}: {u['user_id']} received nothing around the fault")
            result(f"{tag}_others_frames_lost",
                   max(window[u["user_id"]][0] for u in kept))
            result(f"{tag}_others_max_gap_ms", max(window[u["user_id"]][1] for u in kept))
            result(f"{tag}_others_max_gap_while_dying_ms",
                   max(window[u["user_id"]][2] for u in kept))
            # A replacement is running; the backend rejoins the lost users by itself, 2 s after
            # their error status, and they hear their phones again.
            after = workers_of(bridge.proc.pid)
            check(len(after) == workers and victim not in after,
                  f"{tag}: workers {before} -> {after}")
            back, rejoin_to_audio, joins, firsts = 0.0, 0.0, [], []
            for u, (at, *_) in lost.items():
                for _ in range(200):
                    if backend.first("AUDIO", u, at) is not None:
                        break
                    await asyncio.sleep(0.05)
                audio = backend.first("AUDIO", u, at)
                check(audio is not None, f"{tag}: {u} heard nothing within 10 s of its end: "
                      f"{backend.refusals()[u]}")
                back = max(back, audio[0] - at)
                rejoin, joined = backend.first("REJOIN", u, at)[0], backend.first("JOINED", u, at)[0]
                rejoin_to_audio = max(rejoin_to_audio, audio[0] - rejoin)
                joins.append(round((joined - rejoin) * 1000))
                firsts.append(round((audio[0] - joined) * 1000))
            result(f"{tag}_rejoined_audio_after_ms", round(back * 1000))
            result(f"{tag}_rejoin_to_audio_ms", round(rejoin_to_audio * 1000))
            # Where the rejoin's time goes: JoinRoom's answer, then the first chunk on the new
            # stream, each user's (ms, in order).
            result(f"{tag}_rejoin_joinroom_ms", sorted(joins))
            result(f"{tag}_rejoin_joined_to_audio_ms", sorted(firsts))
            # The others while the lost ones rejoin (a fresh worker's library loading and its
            # joins, on the same cores).
            await asyncio.sleep(1.0)
            during = await backend.window(t_kill + 1.5, time.monotonic())
            result(f"{tag}_others_frames_lost_during_rejoin",
                   max(during[u["user_id"]][0] for u in kept))
            result(f"{tag}_others_max_gap_during_rejoin_ms",
                   max(during[u["user_id"]][1] for u in kept))
            # What the bridge lost from the kill to here. Frames the others missed that it did
            # not lose never reached a worker: LiveKit's lossy data channel dropped them on the
            # way (the server or a phone), on cores the replacement's start had filled.
            result(f"{tag}_bridge_frames_lost", round(lost_by_the_bridge() - lost_before))
            # When the dead worker was reaped: its memory's teardown, which the front does not
            # wait for (its lifeline spoke first).
            reaped = bridge.logged_at(f"pid={victim} exit=")
            check(reaped is not None, f"{tag}: the bridge never reaped the worker")
            result(f"{tag}_reaped_after_ms", round((reaped - wall_kill) * 1000))
        t_leave = time.monotonic()
        await backend.leave()
        ends = {(e[1], e[2]) for e in backend.ended_since(t_leave).values()}
        check(len(backend.ended_since(t_leave)) == users, "not every stream ended on LeaveRoom")
        check(ends == {("OK", "left")}, f"streams ended {ends}")
        check(len(workers_of(bridge.proc.pid)) == workers, "the workers outlive their sessions")
    finally:
        # The bridge is stopped whatever went wrong before: it would outlive this run.
        try:
            backend.stop()
            await phones.stop()
            await bctx.channel.close()
        finally:
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
