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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import livekit_server  # noqa: E402
from livekit_server import LiveKitServer, token  # noqa: E402
from phone import Phone  # noqa: E402
from run import (ROOT, Bridge, Ctx, OwnNetwork, Pacer, bridge_pids, check,  # noqa: E402
                 churn_cycles, cpu_seconds, loud, measure, metric, payload_rule, process_status, ramp,
                 read_chunks, result, run_scenarios, session_state, stream_end, tone,
                 wait_for_count, workers_of)
from livekit import api, rtc  # noqa: E402


class RealCtx(Ctx):
    """The backend's calls, with tokens LiveKit's server accepts: the bridge joins user `u` as
    `cloud-agent:u` in room `u`, its target being the phone `phone-u`."""

    async def join(self, user, identity=None, tok=None):
        identity = identity or f"cloud-agent:{user}"
        return await self.stub.JoinRoom(self.pb.JoinRoomRequest(
            user_id=user, room_name=user, token=tok or token(identity, user),
            livekit_url=self.sfu.url, target_identity=f"phone-{user}"), timeout=20)


async def phone_for(user, identity=None, listen=True):
    return await Phone(identity or f"phone-{user}", user, listen).join()


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


async def warm_up_workers(ctx):
    """Joins one room per room worker and leaves them: every worker's library is loaded."""
    await ctx.joined("warmup0")
    warm = [f"warmup{n}" for n in range(len(workers_of(ctx.bridge.proc.pid)))]
    for u in warm[1:]:
        await ctx.joined(u)
    for u in warm:
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=u, reason="warmup"))
    await asyncio.sleep(1.0)


async def real_room_cost(ctx: RealCtx, rooms: int, rounds: int):
    """Memory and threads of joined rooms (no phone, nothing sent): idle, with `rooms` joined,
    and after leaving them, over several rounds. A leak grows every round; the allocator
    keeping freed memory does not."""
    # Load the library of every room worker with a join and leave each, so the baseline
    # includes its fixed cost (a join goes to the worker with the fewest rooms).
    await warm_up_workers(ctx)
    result("real_cost_workers", len(workers_of(ctx.bridge.proc.pid)))
    rss0, threads0 = ctx.bridge.status_of()
    after = []
    for r in range(rounds):
        for i in range(rooms):
            await ctx.joined(f"user{i}")
        await asyncio.sleep(1.0)
        rss1, threads1 = ctx.bridge.status_of()
        for i in range(rooms):
            await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=f"user{i}", reason="done"))
        await asyncio.sleep(2.0)
        rss2, threads2 = ctx.bridge.status_of()
        after.append(rss2)
        result(f"real_cost_round{r}_rss_kib_idle_joined_left", f"{rss0}/{rss1}/{rss2}")
        result(f"real_cost_round{r}_threads_idle_joined_left", f"{threads0}/{threads1}/{threads2}")
        if r == 0:
            result("real_cost_per_room_kib", (rss1 - rss0) // rooms)
            result("real_cost_per_room_threads", f"{(threads1 - threads0) / rooms:.2f}")
        check(threads2 <= threads0 + 2, f"round {r}: threads {threads0} -> {threads2}")
    # The first rounds take the allocator to its high-water mark, in steps that shrink (with 20
    # rooms, for example +1990, +620, +440, +260 KiB); a leak grows by the same amount every
    # round. The bound on the last round's step is in tests/e2e.rs.
    check(rounds >= 3, "real_room_cost needs at least 3 rounds")
    result("real_cost_rss_growth_in_last_round_kib", after[-1] - after[-2])
    result("real_cost_rss_after_each_round_kib", "/".join(str(a) for a in after))


def thread_names(pid):
    """The threads of bridge `pid` and its room workers, counted by name."""
    names = {}
    for p in bridge_pids(pid):
        for tid in os.listdir(f"/proc/{p}/task"):
            try:
                with open(f"/proc/{p}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


def heard_whole(tag, samples, seconds, hz, tolerance_s):
    """Checks `samples` hold `seconds` of a tone at `hz` and half scale (RMS 0.354), from its
    first loud 10 ms to its last, and reports what was heard under `tag`."""
    heard_s, got_hz, rms = heard_span(samples)
    result(f"{tag}_heard_s", f"{heard_s:.3f}")
    result(f"{tag}_hz", f"{got_hz:.1f}")
    result(f"{tag}_rms", f"{rms:.3f}")
    check(abs(heard_s - seconds) <= tolerance_s, f"heard {heard_s:.3f} s of {seconds} s")
    check(abs(got_hz - hz) < 2, f"heard {got_hz:.1f} Hz")
    check(abs(rms - 0.354) < 0.05, f"heard RMS {rms:.3f}")


def heard_span(samples, rate=16000, level=0.05):
    """(seconds from the first loud 10 ms to the last, Hz, RMS of that span) of what a phone
    heard. The pitch is measured without the span's first and last 10 ms: a tone that stops
    abruptly ends in Opus's ring-out, a loud decaying swing with no zero crossing for up to
    8 ms, which would read as 2 Hz flat over a second. A gap anywhere else still shows (no
    crossings across it)."""
    block = rate // 100
    loud = [i for i in range(0, len(samples) - block + 1, block)
            if max(abs(s) for s in samples[i:i + block]) > level * 32767]
    if not loud:
        return 0.0, 0.0, 0.0
    span = [s / 32767 for s in samples[loud[0]:loud[-1] + block]]
    _, rms = measure(span, rate)
    hz, _ = measure(span[block:-block], rate)
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
    first = next(t for t, b in frames if max(abs(s) for s in b) > 0.05 * 32767)
    result("real_publish_first_heard_ms", f"{(first - sent_at) * 1000:.0f}")
    heard_whole("real_publish", target.samples("speaker"), 3.0, 440, 0.04)
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
    stream = Collector(call)
    started = time.monotonic()
    await feed
    await stream.read_for(3.0)
    result("real_track_fed_s", f"{time.monotonic() - started:.2f}")
    heard_whole("real_track", pcm_of(stream.chunks), 3.0, 440, 0.05)
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await target.leave()


async def joined_hearing(ctx, user, phone):
    """Joins `user` and opens its stream, once the phone's packets reach the client: the
    stream's call and its queue of client chunks."""
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    await asyncio.sleep(0.5)  # the bridge's data channels are open
    await phone.send_data(b"\x00" + bytes(320))
    await read_chunks(call, 1)
    return call, queue


async def ended(ctx, user, cause, timeout=10):
    """Joins `user`, waits for its audio, then `cause()`s the end: the stream's (status, reason),
    GetStatus's reason and how long the end took; each read of the stream waits at most
    `timeout` s."""
    target = await phone_for(user)
    call, queue = await joined_hearing(ctx, user, target)
    asked = time.monotonic()
    await cause(user)
    got = await stream_end(call, timeout=timeout)
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
    call, queue = await joined_hearing(ctx, bystander, target)
    tokens = []
    for name, tok, said in [
            ("expired", token("cloud-agent:kim", "kim", ttl_s=-60), "token is expired"),
            ("wrong_secret", token("cloud-agent:kim", "kim", secret="not-the-servers-secret-0123456789"),
             "signature is invalid"),
            ("garbage", "not-a-jwt", "invalid authorization token"),
            ("another_room", token("cloud-agent:kim", "elsewhere"),
             'the token grants room "elsewhere", not room_name "kim"')]:
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


class TwoWay:
    """Audio both ways through the bridge, as a user's conversation: the phone sends its
    microphone (data packets with a rolling sequence number, 100/s) and the backend sends a
    440 Hz tone on StreamAudio; the client's received chunks and the phone's heard frames are
    kept with their arrival times."""

    def __init__(self, ctx, user, phone):
        self.ctx, self.user, self.phone = ctx, user, phone
        self.got = []  # (arrival, sequence number) of the phone's packets at the client
        self.ended = None
        self.tasks = []

    @classmethod
    async def flowing(cls, ctx, user, phone):
        """`user` joined, its conversation started and audio flowing both ways (within 15 s)."""
        await ctx.joined(user)
        flow = cls(ctx, user, phone)
        await flow.start()
        down, up = await flow.back_since(time.monotonic(), 15)
        check(down is not None and up is not None, f"audio never flowed both ways: {down} {up}")
        return flow

    async def start(self):
        self.call, self.queue = self.ctx.stream(self.user)
        self.tasks = [asyncio.ensure_future(f()) for f in (self._read, self._send, self._talk)]

    async def _read(self):
        self.ended = await stream_end(self.call, into=_Seq(self.got), timeout=None)

    async def _send(self):
        """The backend's side: 100 ms of tone every 100 ms."""
        pcm, pacer = tone(440, 0.1), Pacer()
        while True:
            self.queue.put_nowait(self.ctx.pb.AudioChunk(
                user_id=self.user, pcm_data=pcm, sample_rate=16000, channels=1))
            await pacer.tick()

    async def _talk(self):
        self.sent = 0
        while True:
            await self.phone.send_microphone(1.0, start_seq=self.sent)
            self.sent += 100

    def lost(self):
        """The phone's packets sent in whole seconds so far that never reached the client."""
        received = {n for _, n in self.got}
        return sum(1 for n in range(self.sent) if n % 32768 not in received)

    def heard_loud_since(self, t):
        frames = self.phone.heard.get("speaker", [])
        return next((at - t for at, block in frames
                     if at >= t and max(abs(x) for x in block) > 0.05 * 32767), None)

    def got_since(self, t):
        return next((at - t for at, _ in self.got if at >= t), None)

    async def back_since(self, t, timeout):
        """(seconds to the first phone packet at the client, to the first loud 10 ms at the
        phone) after `t`, waiting at most `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            down, up = self.got_since(t), self.heard_loud_since(t)
            if down is not None and up is not None:
                return down, up
            await asyncio.sleep(0.05)
        return self.got_since(t), self.heard_loud_since(t)

    def stop_sending(self):
        """The backend's side half-closes before an end it expects: grpcio's asyncio client
        reports INTERNAL, not the bridge's status, if a write races the stream's end
        (docs/backend.md, a client caveat)."""
        self.tasks[1].cancel()
        self.queue.put_nowait(None)

    async def stop(self):
        for task in self.tasks[1:]:
            task.cancel()
        self.queue.put_nowait(None)


class _Seq(list):
    """Keeps (arrival, packet count) of each chunk appended as (arrival, chunk): the phone's
    count is the chunk's first sample (phone.send_microphone)."""

    def __init__(self, into):
        super().__init__()
        self.into = into

    def append(self, item):
        at, chunk = item
        if len(chunk.pcm_data) >= 2:
            self.into.append((at, int.from_bytes(chunk.pcm_data[:2], "little")))


async def link_down(network, seconds):
    """Takes an OwnNetwork's link down for `seconds`: when it went down and came back."""
    network.set(False)
    t_down = time.monotonic()
    await asyncio.sleep(seconds)
    network.set(True)
    return t_down, time.monotonic()


async def let_go(phone, bctx, bridge):
    """Ends a scenario's phone and its bridge of its own."""
    await phone.leave()
    await bctx.channel.close()
    bridge.stop()


async def own_bridge(ctx, settings=None):
    """A bridge in a network namespace of its own, behind a veth pair (run.py's OwnNetwork),
    so its link to LiveKit can go down alone; `settings` go to its environment."""
    bridge = Bridge(ctx.bridge.binary, ctx.bridge.tmp, name=f"own{time.monotonic_ns()}",
                    own_network=True, settings=settings)
    await bridge.wait_ready()
    return bridge, RealCtx(ctx.pb, ctx.pbg, bridge, ctx.sfu)


async def participant_sid(ctx, user, identity=None):
    """The server's session id of a participant in `user`'s room (the bridge's if no
    `identity`), or None: a resume keeps it, a full reconnect is a new participant."""
    identity = identity or f"cloud-agent:{user}"
    lk = ctx.sfu.api()
    try:
        ps = await lk.room.list_participants(api.ListParticipantsRequest(room=user))
    finally:
        await lk.aclose()
    return next((p.sid for p in ps.participants if p.identity == identity), None)


class NetPhone:
    """The Go phone (tests/phones, LiveKit's Go SDK) for `user`, in a network namespace of its
    own behind a veth pair (run.py's OwnNetwork), so its link to LiveKit can go down alone
    (phone.py's phone loads LiveKit's library into this process and shares its network). It
    sends the microphone as data packets, 100 a second, subscribes to the bridge's track and
    reports its counters every 50 ms: `reports` holds (monotonic time, sent, RTP read)."""

    def __init__(self, user, tmp):
        self.user, self.tmp = user, tmp
        self.reports = []
        self.results = {}

    async def start(self):
        log = open(os.path.join(self.tmp, f"netphone-{self.user}.log"), "w")
        # `unshare -n` makes the namespace and execs the shell in the same process; the shell
        # waits for a line on stdin, sent once the veth pair is in place, then becomes the phone.
        self.proc = await asyncio.create_subprocess_exec(
            "unshare", "-n", "sh", "-c", 'read go && exec "$@"', "sh",
            os.path.join(ROOT, "vendor/phones"), "-url", LiveKitServer.url,
            "-key", livekit_server.KEY, "-secret", livekit_server.SECRET, "-user", self.user,
            "-rooms", "1", "-mode", "data", "-listen", "-report", "50ms",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log)
        self.network = OwnNetwork(self.proc.pid)
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        ready = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).split()
        check(ready == [b"READY", b"1"], f"the Go phone did not join: {ready}")
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        offset = time.time() - time.monotonic()
        while line := await self.proc.stdout.readline():
            words = line.decode().split()
            if words[:1] == ["AT"]:
                at, sent, rtp = (int(w) for w in words[1:4])
                self.reports.append((at / 1000 - offset, sent, rtp))
            elif words[:1] == ["RESULT"] and "=" in words[1]:
                k, v = words[1].split("=", 1)
                self.results[k] = v

    def sent_at(self, t):
        """Packets sent by monotonic time `t` (to the nearest 50 ms report)."""
        return next((sent for at, sent, _ in self.reports if at >= t), self.reports[-1][1])

    def heard_since(self, t):
        """Seconds from `t` to the first report after it that read more RTP, or None."""
        after = [(at, rtp) for at, _, rtp in self.reports if at >= t]
        return next((at - t for (at, rtp), (_, before) in zip(after[1:], after)
                     if rtp > before), None)

    async def stop(self):
        """Leaves the room; returns the packets it sent in all."""
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 20)
        await self.reader
        return int(self.results.get("phones_sent", 0))


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


def marked(n):
    """A phone's data packet whose PCM says it is one: "DATA" in bytes 4 to 8 after the
    payload rule, which no decoded frame of a tone holds."""
    return bytes([n % 256]) + n.to_bytes(4, "little") + b"DATA" + bytes(312)


def is_data(chunk):
    return chunk.pcm_data[4:8] == b"DATA"


async def send_marked(phone, count, stop=None):
    """`count` marked packets, 100 a second (until `stop` is set, if given)."""
    t0 = time.monotonic()
    for n in range(count):
        if stop is not None and stop.is_set():
            return
        await phone.send_data(marked(n))
        await asyncio.sleep(max(0, t0 + (n + 1) * 0.01 - time.monotonic()))


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


async def real_leaks(ctx: RealCtx, rooms: int, rounds: int = 2):
    """Rooms ended by the server (DeleteRoom) while tracks are published both ways, round after
    round: the bridge's threads return to their count before the round. LiveKit's library
    strands the local tracks of a room the server ends (rust-sdks #1443), and sometimes the
    WebRTC runtime (network, signalling and worker threads) with them; the bridge retires a
    room worker holding a stranded runtime, so after each round no runtime is left. RSS is
    reported per room and round, not bounded: it grows also for rooms the bridge leaves
    itself, and where it goes is not known yet (docs/livekit.md)."""
    lk = ctx.sfu.api()
    pcm = tone(440, 1.0)
    retired = 'livekit_bridge_room_worker_exits_total{kind="retired"}'

    def runtimes():
        return thread_names(ctx.bridge.proc.pid).get("network_thread", 0)

    async def one_round(n):
        users = [f"leak{n}-{i}" for i in range(rooms)]
        phones = []
        for u in users:
            phone = await phone_for(u)
            _, feed = await phone.publish_microphone(tone(660, 0.5))
            asyncio.ensure_future(feed)
            phones.append(phone)
            await ctx.joined(u)
        streams = [ctx.stream(u) for u in users]
        for (_, queue), u in zip(streams, users):
            for i in range(0, len(pcm), 3200):
                queue.put_nowait(ctx.pb.AudioChunk(user_id=u, pcm_data=pcm[i:i + 3200],
                                                   sample_rate=16000, channels=1))
        # Every room's track is heard by its phone: both ways are up.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(p.heard.get("speaker") for p in phones):
            await asyncio.sleep(0.2)
        heard = sum(1 for p in phones if p.heard.get("speaker"))
        check(heard == rooms, f"round {n}: {heard} of {rooms} phones heard the bridge")
        busy = ctx.bridge.status_of()
        for u in users:
            await lk.room.delete_room(api.DeleteRoomRequest(room=u))
        ends = [await stream_end(call, timeout=20) for call, _ in streams]
        check(all(e == (grpc.StatusCode.OK, "room_deleted") for e in ends),
              f"round {n}: streams ended {set(ends)}")
        for (_, queue) in streams:
            queue.put_nowait(None)
        for p in phones:
            await p.leave()
        # Every WebRTC runtime winds down with its worker's last room, or, stranded, goes with
        # the worker the bridge retires for it (two looks 2 s apart, then its exit): at most
        # 15 s. Then the threads until their count is back, at most 5 s more.
        await asyncio.sleep(1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and runtimes():
            await asyncio.sleep(0.2)
        for _ in range(50):
            if ctx.bridge.status_of()[1] <= base_threads:
                break
            await asyncio.sleep(0.1)
        result(f"real_leaks_threads_after_round_{n}", thread_names(ctx.bridge.proc.pid))
        return busy, ctx.bridge.status_of(), runtimes()

    # The library's fixed cost is paid by a first round; the baseline is taken after it.
    base_threads = 1 << 30
    await one_round("warm")
    base_rss, base_threads = ctx.bridge.status_of()
    retired_before = metric(retired)
    after = []
    for n in range(rounds):
        (busy_rss, busy_threads), (rss, threads), left = await one_round(n)
        after.append((rss, threads, left))
        result(f"real_leaks_round{n}", f"busy {busy_rss} KiB {busy_threads} threads; after "
                                       f"{rss} KiB {threads} threads, {left} WebRTC runtimes")
    result("real_leaks_baseline", f"{base_rss} KiB {base_threads} threads")
    growth = (after[-1][0] - base_rss) / rooms / rounds
    result("real_leaks_threads_left", max(t for _, t, _ in after) - base_threads)
    result("real_leaks_runtimes_left", max(r for _, _, r in after))
    result("real_leaks_workers_retired", int(metric(retired) - retired_before))
    result("real_leaks_rss_growth_per_room_and_round_kib", f"{growth:.1f}")
    result("real_leaks_workers", len(workers_of(ctx.bridge.proc.pid)))
    check(all(r == 0 for _, _, r in after),
          f"WebRTC runtimes left after the rounds: {[r for _, _, r in after]}")
    await lk.aclose()


class Collector:
    """Reads a StreamAudio on a task of its own, keeping (arrival, chunk): a grpcio read that
    is cancelled (say, by a timeout) cancels the whole call, so reads are never timed out."""

    def __init__(self, call):
        self.chunks = []
        self.ended = None
        self.task = asyncio.ensure_future(self._read(call))

    async def _read(self, call):
        self.ended = await stream_end(call, into=self.chunks, timeout=None)

    async def read_for(self, seconds):
        """The chunks that arrive in the next `seconds`."""
        start = len(self.chunks)
        await asyncio.sleep(seconds)
        check(self.ended is None, f"the stream ended: {self.ended}")
        return self.chunks[start:]

    async def loud_since(self, t, timeout):
        """Seconds from `t` to the first loud chunk that arrived after it, waiting at most
        `timeout` s for one (None if none came); the stream must not end meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            at = next((at for at, c in self.chunks if at >= t and loud(c)), None)
            if at is not None or time.monotonic() >= deadline:
                return None if at is None else at - t
            check(self.ended is None, f"the stream ended: {self.ended}")
            await asyncio.sleep(0.05)

    async def during(self, work, settle=1.0):
        """The chunks that arrive while `work` runs and for `settle` seconds after."""
        start = len(self.chunks)
        await work
        await asyncio.sleep(settle)
        check(self.ended is None, f"the stream ended: {self.ended}")
        return self.chunks[start:]


def pcm_of(chunks):
    return [int.from_bytes(c.pcm_data[i:i + 2], "little", signed=True)
            for _, c in chunks for i in range(0, len(c.pcm_data), 2)]


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


class Files:
    """Plain HTTP on the namespace's address for PlayAudio's files (the bridge's egress policy
    is opened to 10.99.0.0/16 by run.py's Bridge)."""

    def __init__(self, files):
        import http.server
        import threading
        served = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                kind, body = served[self.path.lstrip("/")]
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((livekit_server.HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name):
        return f"http://{livekit_server.HOST}:{self.port}/{name}"

    def close(self):
        self.server.shutdown()


def wav(pcm, rate=16000):
    import io
    import wave
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def ramp_heard(frames, seconds):
    """What a phone heard of a rising ramp of `seconds` (run.py's `ramp`) in `frames`, its
    (arrival, 10 ms block) list: how long from its first audible sample to its last, which
    moment of the ramp its first 10 ms were sent at (their level says), and when its first and
    last audible blocks arrived."""
    samples = [x for _, b in frames for x in b]
    loud = [i for i, x in enumerate(samples) if abs(x) > 0.008 * 32767]
    check(loud, "the phone heard silence")
    first, last = loud[0], loud[-1]
    ten_ms = samples[first:first + 160]
    amp = (2 * sum(x * x for x in ten_ms) / len(ten_ms)) ** 0.5 / 32767
    # The ramp's amplitude is 0.02 + 0.88 t / seconds at time t.
    sent_at_ms = max(0.0, (amp - 0.02) / 0.88 * seconds * 1000)
    starts = [0]
    for _, b in frames:
        starts.append(starts[-1] + len(b))

    def arrival(index):
        return next(frames[n][0] for n in range(len(frames)) if starts[n + 1] > index)
    return (last - first + 1) / 16000, sent_at_ms, arrival(first), arrival(last)


async def real_fresh_tracks(ctx: RealCtx):
    """Nothing is lost at the start of a fresh track: a 2 s rising ramp sent on StreamAudio in
    real time (20 ms chunks), and one played by PlayAudio (a WAV over HTTP), each on a track of
    its own, are heard by the phone whole, from their first 10 ms (the ramp's level says which
    10 ms came first) to their last; PlayAudio's COMPLETED comes when the last sample has gone
    out, not when it was queued."""
    user = "oli"
    seconds = 2.0
    target = await phone_for(user)
    pcm = ramp(seconds)
    files = Files({"ramp.wav": ("audio/wav", wav(pcm))})
    try:
        await ctx.joined(user)
        call, queue = ctx.stream(user)
        pacer = Pacer(period=0.02)
        for i in range(0, len(pcm), 640):
            queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=pcm[i:i + 640],
                                               sample_rate=16000, channels=1, track_id=0))
            await pacer.tick()
        await asyncio.sleep(1.0)
        check(target.heard.get("speaker"), f"the phone heard nothing: {list(target.heard)}")
        paths = {"stream": ramp_heard(target.heard["speaker"], seconds)}
        events = []
        async for e in ctx.stub.PlayAudio(ctx.pb.PlayAudioRequest(
                request_id="p1", audio_url=files.url("ramp.wav"), user_id=user, track_id=2)):
            events.append((time.monotonic(), e))
        kinds = [ctx.pb.PlayAudioEvent.EventType.Name(e.type) for _, e in events]
        check(kinds[0] == "STARTED" and kinds[-1] == "COMPLETED", f"events {kinds}")
        completed_at, completed = events[-1]
        await asyncio.sleep(1.0)
        check(target.heard.get("tts"), f"the phone heard nothing on tts: {list(target.heard)}")
        paths["play"] = ramp_heard(target.heard["tts"], seconds)
        last_at = paths["play"][3]
        for path, (heard_s, sent_at_ms, _, _) in paths.items():
            result(f"real_fresh_{path}_heard_s", f"{heard_s:.3f}")
            result(f"real_fresh_{path}_first_heard_sent_at_ms", f"{sent_at_ms:.0f}")
        result("real_fresh_play_duration_ms", completed.duration_ms)
        result("real_fresh_play_last_heard_minus_completed_ms",
               f"{(last_at - completed_at) * 1000:.0f}")
        for path, (heard_s, sent_at_ms, _, _) in paths.items():
            # Lost audio makes it shorter; Opus's ring-out after the ramp's abrupt end makes it
            # longer by 16 to 42 ms (measured on an idle machine and in CI).
            check(-0.03 <= heard_s - seconds <= 0.06,
                  f"{path}: heard {heard_s:.3f} s of {seconds} s")
            check(sent_at_ms <= 10, f"{path}: the first 10 ms heard were sent {sent_at_ms:.0f} ms in")
        check(abs(completed.duration_ms - 2000) <= 10, f"duration_ms {completed.duration_ms}")
        # The last sample reaches the phone within Opus's framing and the phone's jitter buffer
        # of COMPLETED; a COMPLETED sent when the audio was merely queued comes earlier.
        check(last_at - completed_at <= 0.2,
              f"the last sample was heard {(last_at - completed_at) * 1000:.0f} ms after COMPLETED")
        queue.put_nowait(None)
    finally:
        files.close()
        await target.leave()


async def real_utterances(ctx: RealCtx, quiet_s: float = 3.0):
    """Two utterances on one track with the track quiet between them, as a conversation goes:
    1 s of 440 Hz, `quiet_s` of nothing sent (the bridge stops encoding after its tail of
    silence), then 1 s of 660 Hz, each sent in real time in 100 ms chunks, one chunk ahead as
    a streaming backend keeps its next chunk ready. The bridge's clock finds every frame in
    time (no underrun); the phone hears each utterance whole at its pitch and level; the
    second as soon after it is sent as the first (its decoder did not lose or delay it across
    the quiet); and nothing loud in between. Then a backend that falls behind mid-utterance:
    the bridge counts the one underrun it caused."""
    user = "uma"
    target = await phone_for(user)
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    underruns = metric("livekit_bridge_published_underruns_total")
    sent = []
    for hz in (440, 660):
        pcm, pacer = tone(hz, 1.0), Pacer(ahead=0.1)
        sent.append(time.monotonic())
        for i in range(0, len(pcm), 3200):
            queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=pcm[i:i + 3200],
                                               sample_rate=16000, channels=1, track_id=0))
            await pacer.tick()
        if hz == 440:
            await asyncio.sleep(quiet_s)
    await asyncio.sleep(1.5)
    frames = target.heard.get("speaker", [])
    check(frames, "the phone never heard the bridge's speaker track")
    underruns = metric("livekit_bridge_published_underruns_total") - underruns
    result("real_utterance_underruns", f"{underruns:.0f}")
    check(underruns == 0, f"the bridge's clock ran dry {underruns:.0f} times mid-utterance")

    def loud(block, level=0.05):
        return max(abs(x) for x in block) > level * 32767

    # The first utterance starts with the new track (its negotiation); the second must not.
    spans = []
    for start, end in ((sent[0], sent[1]), (sent[1], float("inf"))):
        mine = [(t, b) for t, b in frames if start <= t < end]
        first = next((t for t, b in mine if loud(b)), None)
        check(first is not None, f"the utterance sent at {start - sent[0]:.1f} s was not heard")
        spans.append((first - start, [x for _, b in mine for x in b]))
    for n, ((delay, samples), hz) in enumerate(zip(spans, (440, 660))):
        result(f"real_utterance{n}_first_heard_ms", f"{delay * 1000:.0f}")
        heard_whole(f"real_utterance{n}", samples, 1.0, hz, 0.04)
    # The quiet: from 100 ms after the first utterance's last loud 10 ms to 10 ms before the
    # second's first.
    last1 = max(t for t, b in frames if t < sent[1] and loud(b))
    first2 = sent[1] + spans[1][0]
    quiet = [x for t, b in frames if last1 + 0.1 < t < first2 - 0.01 for x in b]
    peak = max((abs(x) for x in quiet), default=0) / 32767
    result("real_utterance_quiet_heard_s", f"{len(quiet) / 16000:.2f}")
    result("real_utterance_quiet_peak", f"{peak:.4f}")
    check(len(quiet) / 16000 > quiet_s - 0.5, f"only {len(quiet) / 16000:.2f} s of the quiet heard")
    check(peak < 0.01, f"the phone heard sound in the quiet (peak {peak:.4f} of full scale)")
    check(spans[1][0] <= spans[0][0] + 0.06,
          f"the second utterance was heard {spans[1][0] * 1000:.0f} ms after it was sent, "
          f"the first {spans[0][0] * 1000:.0f} ms")
    # A backend that falls behind real time mid-utterance (300 ms, nothing for 250 ms, 300 ms):
    # the clock runs dry once, and the bridge counts it where an operator sees it.
    underruns = metric("livekit_bridge_published_underruns_total")
    for part in range(2):
        pcm, pacer = tone(440, 0.3), Pacer(ahead=0.1)
        for i in range(0, len(pcm), 3200):
            queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=pcm[i:i + 3200],
                                               sample_rate=16000, channels=1, track_id=0))
            await pacer.tick()
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.5)
    underruns = metric("livekit_bridge_published_underruns_total") - underruns
    result("real_utterance_late_backend_underruns", f"{underruns:.0f}")
    check(underruns == 1, f"a late backend counted {underruns:.0f} underruns, not 1")
    queue.put_nowait(None)
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    await target.leave()


async def real_crowded(ctx: RealCtx, others: int = 10):
    """A crowded room: `others` participants publishing tracks and sending data besides the
    target. The bridge subscribes to nothing but the target, so its CPU does not grow with
    them, and only the target's audio arrives."""
    user = "pat"
    target = await phone_for(user)
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    stream = Collector(call)

    async def cpu_over(seconds):
        """The bridge's CPU (cores) while the phone sends for `seconds`, and (packets sent,
        chunks the client got)."""
        pid = ctx.bridge.proc.pid
        before, t0 = cpu_seconds(pid), time.monotonic()
        sending = asyncio.ensure_future(target.send_microphone(seconds))
        got = await stream.during(sending, settle=0.5)
        cores = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
        return cores, (len(sending.result()), len(got))

    await asyncio.sleep(1.0)
    alone, got_alone = await cpu_over(5.0)
    crowd = []

    async def chat(o, n):
        while True:  # 10 packets a second each, with a topic and without
            await o.send_data(bytes([0xEE, n]) + bytes(318), topic="chat" if n % 2 else "")
            await asyncio.sleep(0.1)

    for n in range(others):
        o = await phone_for(user, f"guest-{n}", listen=False)
        # Published, and sending: a source given nothing is fed silence by the library, which
        # encodes and sends it like speech (the driver cannot feed ten tones in real time).
        await o.publish_microphone(None)
        o.chatting = asyncio.ensure_future(chat(o, n))
        crowd.append(o)
    await asyncio.sleep(2.0)
    crowded, got_crowded = await cpu_over(5.0)
    result("real_crowded_bridge_cpu_alone", f"{alone:.3f}")
    result("real_crowded_bridge_cpu_with_others", f"{crowded:.3f}")
    result("real_crowded_chunks_alone", f"{got_alone[1]} of {got_alone[0]}")
    result("real_crowded_chunks_with_others", f"{got_crowded[1]} of {got_crowded[0]}")
    status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
    result("real_crowded_participants", status.participant_count)
    check(status.participant_count == others + 2, f"participant_count {status.participant_count}")
    for sent, got in (got_alone, got_crowded):
        check(got == sent, f"{got} chunks for the phone's {sent} packets")
    check(crowded <= alone * 1.5 + 0.02, f"bridge CPU {alone:.3f} -> {crowded:.3f} cores")
    for o in crowd:
        o.chatting.cancel()
        await o.leave()
    queue.put_nowait(None)
    await target.leave()


async def real_token_refresh(ctx: RealCtx):
    """A join whose token expires 10 s after it is issued, then an outage after 15 s: every
    reconnect presents a token, and the library uses the one the server refreshed, so the
    session survives and audio comes back."""
    bridge, bctx = await own_bridge(ctx)
    user = "quinn"
    phone = await phone_for(user)
    try:
        r = await bctx.join(user, tok=token(f"cloud-agent:{user}", user, ttl_s=10))
        check(r.success, f"join: {r.error}")
        flow = TwoWay(bctx, user, phone)
        await flow.start()
        await asyncio.sleep(15)  # the join's token has expired
        bridge.network.set(False)
        await asyncio.sleep(3)
        bridge.network.set(True)
        down, up = await flow.back_since(time.monotonic(), 30)
        result("real_refresh_stream", "open" if flow.ended is None else f"{flow.ended}")
        result("real_refresh_back_ms", "never" if down is None else f"{down * 1000:.0f}")
        check(flow.ended is None, f"the stream ended: {flow.ended}")
        check(down is not None and up is not None, f"audio did not come back: {down} {up}")
        await flow.stop()
    finally:
        await let_go(phone, bctx, bridge)



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


async def real_sdk_retention(ctx: RealCtx, cycles: int = 80):
    """What LiveKit's library keeps of a room that is joined and left, driven by LiveKit's own
    Python SDK in this process rather than by the bridge: `cycles` joins as the bridge would
    (publish a track, capture 100 ms, unpublish, leave), then as many without the track; this
    process's RSS growth per cycle after the first quarter of each. By hand (`real_churn`'s
    bound on the bridge's memory rests on it)."""
    listener = await phone_for("keep")
    try:
        for publish in (True, False):
            marks = []
            for i in range(cycles):
                room = rtc.Room()
                await room.connect(livekit_server.LiveKitServer.url,
                                   token("cloud-agent:keep", "keep"),
                                   rtc.RoomOptions(auto_subscribe=False))
                if publish:
                    source = rtc.AudioSource(16000, 1)
                    track = rtc.LocalAudioTrack.create_audio_track("speaker", source)
                    pub = await room.local_participant.publish_track(track, rtc.TrackPublishOptions(
                        source=rtc.TrackSource.SOURCE_MICROPHONE))
                    for _ in range(10):
                        await source.capture_frame(rtc.AudioFrame(bytes(320), 16000, 1, 160))
                    await room.local_participant.unpublish_track(pub.sid)
                    await source.aclose()
                await room.disconnect()
                if i in (cycles // 4, cycles - 1):
                    await asyncio.sleep(1)
                    marks.append(process_status(os.getpid())[0])
            per_cycle = (marks[1] - marks[0]) / (cycles - 1 - cycles // 4)
            result(f"real_sdk_retention_{'track' if publish else 'no_track'}_kib_per_cycle",
                   f"{per_cycle:.1f}")
    finally:
        await listener.leave()


async def real_removed_while_publishing(ctx: RealCtx, cycles: int):
    """A fault of LiveKit's library, measured: the server removes the bridge's participant
    (RemoveParticipant) while the bridge's track is still being published (`E2E_REMOVE_AFTER_S`
    after its first chunk), `cycles` times, the session rejoining each time. Reports the threads and memory left 10 s after the last leave;
    each removal has left the library's network, signalling and worker threads behind (a whole
    WebRTC runtime that the next join replaces). By hand; `real_churn` does not remove."""
    user = "rae"
    phone = await phone_for(user)
    lk = ctx.sfu.api()
    try:
        await ctx.joined(user)
        await asyncio.sleep(0.5)
        base_rss, base_threads = ctx.bridge.status_of()
        for _ in range(cycles):
            call, queue = ctx.stream(user)
            queue.put_nowait(ctx.pb.AudioChunk(user_id=user, pcm_data=tone(440, 0.1),
                                               sample_rate=16000, channels=1))
            await asyncio.sleep(float(os.environ.get("E2E_REMOVE_AFTER_S", "0.03")))
            queue.put_nowait(None)
            await lk.room.remove_participant(api.RoomParticipantIdentity(
                room=user, identity=f"cloud-agent:{user}"))
            await stream_end(call, timeout=10)
            await ctx.joined(user)
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
        await asyncio.sleep(10)
        rss, threads = ctx.bridge.status_of()
        result("real_removed_while_publishing_cycles", cycles)
        result("real_removed_while_publishing_threads_before_after", f"{base_threads}/{threads}")
        result("real_removed_while_publishing_rss_kib_before_after", f"{base_rss}/{rss}")
        result("real_removed_while_publishing_threads_left", thread_names(ctx.bridge.proc.pid))
    finally:
        await phone.leave()
        await lk.aclose()


async def real_churn(ctx: RealCtx, cycles: int):
    """The crash that started the project, on LiveKit's server: the session left, replaced and
    abandoned by its client (a third of the cycles each) while the phone sends data packets as
    fast as it can. Each packet carries the number of the bridge's join that had completed
    when it was sent. A join completes only once the session it replaces is closed, and
    LiveKit stops forwarding to a replaced participant before the newer one is in, so a stream
    that delivers a packet tagged with a later join got the newer room's audio after its
    close (a fault in routing by room). Every session gets packets; no panic; memory and
    threads end where they started. (The mock's `churn` tags a packet with the join the SFU
    sends it to, which also catches a packet of an older session in a newer one; a real SFU
    forwards to whoever is in the room.)"""
    user = "cory"
    phone = await phone_for(user, listen=False)
    joins = {"done": 0}
    stop = asyncio.Event()
    sent = {"n": 0}

    async def pump():
        while not stop.is_set():
            tag = joins["done"].to_bytes(4, "little")
            for _ in range(5):
                await phone.send_data(b"\x00" + tag + bytes(316))
                sent["n"] += 1
            await asyncio.sleep(0.002)

    async def join():
        await ctx.joined(user)
        joins["done"] += 1

    pumper = asyncio.ensure_future(pump())
    try:
        await churn_cycles(ctx, user, cycles, join, lambda: joins["done"],
                           lambda got, want: got <= want, sent, "real_churn")
    finally:
        stop.set()
        pumper.cancel()
        await phone.leave()


SCENARIOS = {
    "real_removed_while_publishing": lambda ctx: real_removed_while_publishing(
        ctx, int(os.environ.get("E2E_CYCLES", "50"))),
    "real_sdk_retention": real_sdk_retention,
    "real_participants": real_participants,
    "real_churn": lambda ctx: real_churn(ctx, int(os.environ.get("E2E_CYCLES", "300"))),
    "real_utterances": real_utterances,
    "real_permissions": real_permissions,
    "real_track_follows": real_track_follows,
    "real_fresh_tracks": real_fresh_tracks,
    "real_crowded": real_crowded,
    "real_token_refresh": real_token_refresh,
    "real_leaks": lambda ctx: real_leaks(ctx, int(os.environ.get("E2E_ROOMS", "20")),
                                         int(os.environ.get("E2E_ROUNDS", "2"))),
    "real_room_cost": lambda ctx: real_room_cost(ctx, int(os.environ.get("E2E_ROOMS", "20")),
                                                 int(os.environ.get("E2E_ROUNDS", "5"))),
    "real_outage_2s": lambda ctx: real_outage(ctx, 2.0),
    "real_outage_10s": lambda ctx: real_outage(ctx, 10.0),
    "real_outage_30s": lambda ctx: real_outage(ctx, 30.0),
    "real_phone_outage_5s": lambda ctx: real_phone_outage(ctx, 5.0),
    "real_phone_outage_30s": lambda ctx: real_phone_outage(ctx, 30.0),
    "real_server_restart": real_server_restart,
    "real_gives_up": real_gives_up,
    "real_track_outage_5s": lambda ctx: real_track_outage(ctx, 5.0),
    "real_track_outage_20s": lambda ctx: real_track_outage(ctx, 20.0),
    "real_target_new_sid": real_target_new_sid,
    "real_track_and_data": real_track_and_data,
    "real_audio_source_settings": real_audio_source_settings,
    "real_two_bridges": real_two_bridges,
    "real_track_after_restart": real_track_after_restart,
    "real_key_rotated": real_key_rotated,
    "real_server_shutdown": real_server_shutdown,
    "real_data_packets": real_data_packets,
    "real_publish_heard": real_publish_heard,
    "real_target_track": real_target_track,
    "real_end_table": real_end_table,
    "real_tokens": real_tokens,
}


async def start_server(tmp):
    server = LiveKitServer(tmp)
    await server.start()
    return server


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    asyncio.run(run_scenarios(sys.argv[1], sys.argv[2:], SCENARIOS, start_server, RealCtx,
                              {"metrics": True}))
