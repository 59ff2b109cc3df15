"""End-to-end scenarios against the mock SFU (mock_sfu.py): the release bridge binary, with
LiveKit's real client library inside it, driven by a Python grpcio client over the bridge's Unix
socket, as the backend would. TEST-ONLY CODE. The scenarios LiveKit's own server runs are in
real.py; what is still here is not yet moved there (docs/testing.md says which).

Run by tests/e2e.rs as `unshare -n python run.py <bridge binary> <scenario>`: each run gets a
private network namespace in which this script brings up loopback and a veth pair with
10.99.0.1/24 and 10.99.0.2/24 (libwebrtc gathers no candidates on loopback, and no test may use
the machine's real interface). Exits non-zero, with the reason, if any check fails. Prints
`RESULT key=value` lines with what it measured.
"""

import asyncio
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
from grpc_tools import protoc  # noqa: E402
from livekit.protocol import models  # noqa: E402

from mock_sfu import MockSfu, ToneTrack, make_token  # noqa: E402

SFU_HOST = "10.99.0.1"
SFU_PORT = 7880


def result(key, value):
    print(f"RESULT {key}={value}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def netns_setup():
    cmds = [
        "ip link set lo up",
        "ip link add veth0 type veth peer name veth1",
        f"ip addr add {SFU_HOST}/24 dev veth0",
        "ip addr add 10.99.0.2/24 dev veth1",
        "ip link set veth0 up",
        "ip link set veth1 up",
    ]
    for c in cmds:
        subprocess.run(c.split(), check=True)
    # Everything this namespace can reach: loopback and the veth pair, nothing else.
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True)
    check("default" not in routes.stdout, f"unexpected default route: {routes.stdout}")


def load_stubs(tmp):
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                      os.path.join(proto_dir, "livekit_bridge.proto")])
    check(rc == 0, "protoc failed")
    sys.path.insert(0, tmp)
    import livekit_bridge_pb2 as pb  # noqa: E402
    import livekit_bridge_pb2_grpc as pbg  # noqa: E402
    return pb, pbg


class OwnNetwork:
    """A network namespace of a bridge's own (the process's, made by `unshare -n`), joined to this
    one by a veth pair: the bridge reaches the SFU only through it, so taking this side's end
    down is an outage between the bridge and LiveKit, and nothing else (the gRPC socket is a
    Unix socket and does not care)."""

    made = 0

    def __init__(self, pid):
        OwnNetwork.made += 1
        n = OwnNetwork.made
        self.outer, self.inner, net = f"vb{n}a", f"vb{n}b", f"10.99.{n}"
        inner = self.inner
        self.pid = pid
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(200):  # until `unshare` has made the process's namespace
            if os.readlink(f"/proc/{pid}/ns/net") != mine:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the bridge never got its own network namespace")
        self.outer_address = f"{net}.1"
        inside = ["nsenter", "-t", str(pid), "-n"]
        for c in [f"ip link add {self.outer} type veth peer name {inner}",
                  f"ip addr add {net}.1/24 dev {self.outer}",
                  f"ip link set {self.outer} up",
                  f"ip link set {inner} netns {pid}"]:
            subprocess.run(c.split(), check=True)
        for c in ["ip link set lo up", f"ip addr add {net}.2/24 dev {inner}",
                  f"ip link set {inner} up", f"ip route add 10.99.0.0/24 via {net}.1"]:
            subprocess.run(inside + c.split(), check=True)

    def set(self, up):
        """The far end of the link: packets are lost on the way, the bridge's sockets wait."""
        subprocess.run(["ip", "link", "set", self.outer, "up" if up else "down"], check=True)

    def set_own(self, up):
        """The bridge's own end (its machine's network is gone): connecting fails at once."""
        subprocess.run(["nsenter", "-t", str(self.pid), "-n", "ip", "link", "set", self.inner,
                        "up" if up else "down"], check=True)
        if up:
            subprocess.run(["nsenter", "-t", str(self.pid), "-n", "ip", "route", "replace",
                            "10.99.0.0/24", "via", self.outer_address], check=True)


class Bridge:
    """The release binary, serving on a Unix socket; in this namespace, or with `own_network`
    in one of its own (see OwnNetwork)."""

    def __init__(self, binary, tmp, name="bridge", own_network=False, settings=None,
                 metrics=False):
        self.binary, self.tmp = binary, tmp
        self.socket = os.path.join(tmp, f"{name}.sock")
        env = dict(os.environ)
        env.update({
            "LIVEKIT_GRPC_SOCKET": self.socket,
            "LIVEKIT_FFI_LIB": os.path.join(ROOT, "vendor/livekit-ffi/liblivekit_ffi.so"),
            # PlayAudio's files are served on the namespace's private address.
            "PLAYBACK_ALLOW_NETS": "10.99.0.0/16",
            "RUST_LOG": os.environ.get("BRIDGE_LOG", "warn"),
            # glibc's per-thread arenas keep freed memory of libwebrtc's threads mapped; one
            # arena makes RSS after churn say whether memory was really given back.
            "MALLOC_ARENA_MAX": os.environ.get("BRIDGE_MALLOC_ARENA_MAX", "1"),
        })
        if metrics:
            # The main bridge's metrics, on the namespace's loopback (one bridge can have the
            # port).
            env["BRIDGE_HTTP_ADDR"] = f"127.0.0.1:{METRICS_PORT}"
        env.update(settings or {})
        self.log = open(os.path.join(tmp, f"{name}.log"), "w")
        command = ["unshare", "-n", binary] if own_network else [binary]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.network = OwnNetwork(self.proc.pid) if own_network else None

    async def wait_ready(self):
        for _ in range(200):
            if os.path.exists(self.socket):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("bridge socket never appeared")

    def status_of(self):
        """(RSS KiB, threads) of the bridge: its front process and its room workers."""
        rss = threads = 0
        for pid in bridge_pids(self.proc.pid):
            r, t = process_status(pid)
            rss, threads = rss + r, threads + t
        return rss, threads

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        if os.environ.get("E2E_SHOW_LOG") and self.network is not None:
            with open(self.log.name) as f:
                print(f"---- {os.path.basename(self.log.name)} ----\n" + f.read(), flush=True)
        return self.proc.returncode


def workers_of(pid):
    """The room worker processes of bridge `pid` (its children running `room-worker`)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == pid and len(argv) > 1 and argv[1] == b"room-worker":
            found.append(int(entry))
    return sorted(found)


def bridge_pids(pid):
    """Bridge `pid` and its room workers: where its rooms' costs are."""
    return [pid] + workers_of(pid)


def process_status(pid):
    """(RSS KiB, threads) of process `pid`."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


METRICS_PORT = 19091


def metric(name):
    """A metric's value from the main bridge's /metrics (0 when absent)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def payload_rule(p: bytes) -> bytes:
    """The contract's rule: drop the first byte of an odd payload, then the last if still odd."""
    if len(p) % 2:
        p = p[1:]
    if len(p) % 2:
        p = p[:-1]
    return p


def tone(hz, seconds, rate=16000, amp=0.5):
    n = int(rate * seconds)
    out = bytearray()
    for i in range(n):
        v = int(round(amp * 32767 * math.sin(2 * math.pi * hz * i / rate)))
        out += v.to_bytes(2, "little", signed=True)
    return bytes(out)


class Pacer:
    """A real-time sender's clock, as a backend streaming speech keeps one: chunk k of `period`
    seconds is due at start + k * period - `ahead`, so a late wake-up of the event loop delays
    one chunk and never the ones after it (a relative sleep after each send drifts later every
    chunk, and a receiver that plays in real time runs dry)."""

    def __init__(self, period=0.1, ahead=0.0):
        self.period, self.ahead = period, ahead
        self.start, self.sent = time.monotonic(), 0

    async def tick(self):
        """Waits until the next chunk is due."""
        self.sent += 1
        due = self.start + self.sent * self.period - self.ahead
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def measure(samples, rate):
    """Frequency (zero crossings, interpolated) and RMS of mono float samples."""
    rms = math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))
    crossings = []
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        if a < 0 <= b and b != a:
            crossings.append(i - 1 + (-a) / (b - a))
    if len(crossings) < 2:
        return 0.0, rms
    return (len(crossings) - 1) * rate / (crossings[-1] - crossings[0]), rms


class Requests:
    """Client chunks from a queue until None (an iterator object rather than an async generator,
    which grpcio cannot close cleanly when the call is cancelled)."""

    def __init__(self, queue):
        self.queue = queue

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


class Ctx:
    def __init__(self, pb, pbg, bridge, sfu):
        self.pb, self.pbg, self.bridge, self.sfu = pb, pbg, bridge, sfu
        # Stock grpcio, no options: it sends the socket path as :authority (src/authority.rs).
        self.channel = grpc.aio.insecure_channel(f"unix://{bridge.socket}")
        self.stub = pbg.LiveKitBridgeStub(self.channel)

    async def join(self, user, identity=None):
        identity = identity or f"cloud-agent:{user}"
        r = await self.stub.JoinRoom(self.pb.JoinRoomRequest(
            user_id=user, room_name=user, token=make_token(identity, user),
            livekit_url=self.sfu.url, target_identity="target"), timeout=20)
        return r

    async def joined(self, user):
        r = await self.join(user)
        check(r.success, f"JoinRoom failed: {r.error}")
        return r

    def stream(self, user):
        queue = asyncio.Queue()
        first = self.pb.AudioChunk(user_id=user, sample_rate=16000, channels=1,
                                   timestamp_ms=int(time.time() * 1000))
        queue.put_nowait(first)

        call = self.stub.StreamAudio(Requests(queue))
        return call, queue

    async def participant(self, user):
        """The mock's view of the bridge's participant for `user` (the latest to join)."""
        identity = f"cloud-agent:{user}"
        for _ in range(200):
            p = self.sfu.participants.get(identity)
            if p is not None:
                return p
            await asyncio.sleep(0.05)
        raise AssertionError(f"{identity} never joined the mock SFU")


async def read_chunks(call, count, timeout=10.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        check(left > 0, f"only {len(out)} of {count} chunks arrived")
        chunk = await asyncio.wait_for(call.read(), left)
        check(chunk is not grpc.aio.EOF, f"stream ended after {len(out)} chunks")
        out.append(chunk)
    return out


# --------------------------------------------------------------------------------------------
# Scenarios


def ramp(seconds, rate=16000, hz=1000, start=0.02, end=0.9):
    """A tone whose amplitude rises linearly from `start` to `end`: the level heard at any
    moment says which moment of the signal it was."""
    n = int(rate * seconds)
    out = bytearray()
    for i in range(n):
        amp = start + (end - start) * i / n
        v = int(round(amp * 32767 * math.sin(2 * math.pi * hz * i / rate)))
        out += v.to_bytes(2, "little", signed=True)
    return bytes(out)


async def stream_end(call, into=None, timeout=10):
    """Reads a StreamAudio to its end: its status code and its x-bridge-end-reason. Each chunk
    is kept in `into` with its arrival time, if given; each read waits at most `timeout` s
    (None: for as long as it takes)."""
    try:
        while (chunk := await asyncio.wait_for(call.read(), timeout)) is not grpc.aio.EOF:
            if into is not None:
                into.append((time.monotonic(), chunk))
        trailers, code = await call.trailing_metadata(), await call.code()
    except grpc.aio.AioRpcError as e:
        trailers, code = e.trailing_metadata(), e.code()
    return code, dict(trailers or ()).get("x-bridge-end-reason")


async def server_shutdown_reason(ctx: Ctx):
    """A disconnect with the reason SERVER_SHUTDOWN ends the stream UNAVAILABLE `room_lost` (a
    rejoin can work, on another node), and GetStatus says why. LiveKit's own shutdown reaches
    the library as a leave to reconnect after, never as this reason (`real_server_shutdown` in
    real.py), so only the mock can send it; the other reasons are LiveKit's own there."""
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


async def wait_for_count(ctx, user, want):
    """Waits (at most 5 s) until GetStatus gives `user`'s participant_count as `want`; returns
    it."""
    for _ in range(100):
        status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
        if status.participant_count == want:
            return want
        await asyncio.sleep(0.05)
    check(False, f"participant_count stayed {status.participant_count}, wanted {want}")


async def churn_cycles(ctx, user, cycles, join, generation, fits, sent, tag):
    """The crash regression's cycles, against either server: `cycles` sessions of `user` in
    turn left (LeaveRoom), replaced (a new JoinRoom) and abandoned (the client cancels), while
    the caller's pump sends packets tagged with a join number. Each session's stream must get
    three packets and, once it has ended, nothing more; `fits(packet_tag, generation())` says
    whether a packet may reach the stream of that join. `join()` joins again. Reports the
    figures under `tag` and returns (RSS and threads at the start, RSS after a quarter of the
    cycles, RSS and threads 2 s after the last leave)."""
    def checked(chunk, i, join_number, closed):
        got = int.from_bytes(chunk.pcm_data[:4], "little")
        check(fits(got, join_number), f"cycle {i}: the {'closed ' if closed else ''}stream of "
              f"join {join_number} delivered a packet tagged with join {got}")

    await join()
    await asyncio.sleep(0.5)
    base_rss, base_threads = ctx.bridge.status_of()
    frames, rss_quarter, started = 0, base_rss, time.monotonic()
    for i in range(cycles):
        if i == cycles // 4:
            rss_quarter, _ = ctx.bridge.status_of()
        number = generation()
        call, queue = ctx.stream(user)
        for chunk in await read_chunks(call, 3, timeout=15):
            checked(chunk, i, number, closed=False)
        frames += 3
        way = i % 3
        if way == 2:
            call.cancel()  # the client goes away: its session closes
            await asyncio.sleep(0.05)
        else:
            queue.put_nowait(None)  # half-closed, as the backend does before an end it expects
        if way == 0:
            r = await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="churn"))
            check(r.success, r.error)
        await join()  # way 1: replaces the session while packets flow
        # The old stream ends, and never delivers a packet that only a newer session may get.
        try:
            while (chunk := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
                checked(chunk, i, number, closed=True)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
    took = time.monotonic() - started
    r = await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=user, reason="done"))
    check(r.success, r.error)
    await asyncio.sleep(2.0)
    rss, threads = ctx.bridge.status_of()
    result(f"{tag}_cycles", cycles)
    result(f"{tag}_cycle_ms", f"{took / cycles * 1000:.0f}")
    result(f"{tag}_frames_checked", frames)
    result(f"{tag}_packets_sent", sent["n"])
    result(f"{tag}_rss_kib_start_quarter_end", f"{base_rss}/{rss_quarter}/{rss}")
    result(f"{tag}_threads_start_end", f"{base_threads}/{threads}")
    check(ctx.bridge.proc.poll() is None, "the bridge died")
    check(threads <= base_threads, f"threads {base_threads} -> {threads}")
    return base_rss, base_threads, rss_quarter, rss, threads


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


def cpu_seconds(pid):
    """User + system CPU seconds of bridge `pid` and its room workers, from /proc."""
    total = 0.0
    for p in bridge_pids(pid):
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def room_load(ctx: Ctx, rooms: int, seconds: float = 10.0, via: str = "data"):
    """`rooms` real rooms with audio both ways: the target sends 100 data packets a second to
    each (with `via="track"`, publishes an Opus microphone track instead, which the bridge
    subscribes to and decodes), and each user's client streams 100 frames a second of PCM,
    which the bridge publishes. The bridge process's CPU, RSS and threads per room, from /proc,
    and the delay through the bridge (arrival to the client, ms resolution)."""
    await ctx.joined("warmup")
    await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id="warmup", reason="warmup"))
    await asyncio.sleep(1.0)
    rss0, threads0 = ctx.bridge.status_of()
    users = [f"load{i}" for i in range(rooms)]
    calls, parts = [], []
    for u in users:
        if via == "track":
            await ctx.joined(u)
            call, queue = ctx.stream(u)
            p = await ctx.participant(u)
            await p.publish_track_as("target", f"TR_load_{u}", ToneTrack(440, 3600.0))
            await asyncio.wait_for(p.subscribed.get(), 15)
        else:
            call, queue = await streaming(ctx, u)
            p = await ctx.participant(u)
        calls.append((call, queue))
        parts.append(p)
    received = {"n": 0, "sent": 0}
    delays = []
    stop = asyncio.Event()

    async def reader(call):
        while not stop.is_set():
            chunk = await call.read()
            if chunk is grpc.aio.EOF:
                return
            received["n"] += 1
            delays.append(int(time.time() * 1000) - chunk.timestamp_ms)

    async def pump():
        frame = tone(440, 0.01)
        packet = b"\x00" + frame
        t0 = time.monotonic()
        i = 0
        while not stop.is_set():
            for (call, queue), p in zip(calls, parts):
                queue.put_nowait(ctx.pb.AudioChunk(pcm_data=frame, sample_rate=16000,
                                                   channels=1, track_id=0))
                if via == "track":
                    received["sent"] += 1  # the track's 10 ms that the library delivers
                elif p.try_send_data("target", packet):
                    received["sent"] += 1
            i += 1
            await asyncio.sleep(max(0, t0 + i * 0.01 - time.monotonic()))

    readers = [asyncio.create_task(reader(c)) for c, _ in calls]
    pumper = asyncio.create_task(pump())
    await asyncio.sleep(2.0)  # every room's publication and track are up
    pid = ctx.bridge.proc.pid
    cpu0, t0, n0, sent0 = cpu_seconds(pid), time.monotonic(), received["n"], received["sent"]
    delays.clear()
    await asyncio.sleep(seconds)
    cpu1, t1, n1, sent1 = cpu_seconds(pid), time.monotonic(), received["n"], received["sent"]
    rss1, threads1 = ctx.bridge.status_of()
    stop.set()
    await pumper
    for call, queue in calls:
        queue.put_nowait(None)
        call.cancel()
    for t in readers:
        t.cancel()
    for u in users:
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=u, reason="done"))
    wall = t1 - t0
    delays.sort()
    pct = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else -1
    result(f"load{rooms}_cores", f"{(cpu1 - cpu0) / wall:.3f}")
    result(f"load{rooms}_cpu_ms_per_room_second", f"{(cpu1 - cpu0) / wall / rooms * 1000:.2f}")
    result(f"load{rooms}_delivered_of_sent", f"{n1 - n0}/{sent1 - sent0}")
    result(f"load{rooms}_rss_kib_per_room", (rss1 - rss0) // rooms)
    result(f"load{rooms}_threads_per_room", f"{(threads1 - threads0) / rooms:.2f}")
    result(f"load{rooms}_delay_ms_p50_p99_p999", f"{pct(0.5)}/{pct(0.99)}/{pct(0.999)}")


async def streaming(ctx: Ctx, user):
    """Joins `user`, opens its stream and waits for the first chunk from the target: the
    stream call and its request queue."""
    await ctx.joined(user)
    call, queue = ctx.stream(user)
    p = await ctx.participant(user)
    await p.send_data("target", b"\x00" + bytes(320))
    await read_chunks(call, 1)
    return call, queue


async def replaced_here(ctx: Ctx):
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


async def session_state(ctx, user):
    """GetStatus's x-bridge-session-state."""
    call = ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
    await call
    return dict(await call.initial_metadata()).get("x-bridge-session-state")


def loud(chunk, level=0.05):
    """Whether a 16 kHz PCM16 chunk holds sound (RMS over `level` of full scale), not the
    library's concealment fading to silence."""
    pcm = chunk.pcm_data
    n = len(pcm) // 2
    if n == 0:
        return False
    total = sum(int.from_bytes(pcm[i:i + 2], "little", signed=True) ** 2 for i in range(0, 2 * n, 2))
    return math.sqrt(total / n) / 32768.0 > level


SCENARIOS = {
    "replaced_here": replaced_here,
    "server_shutdown_reason": server_shutdown_reason,
    "churn": lambda ctx: churn(ctx, int(os.environ.get("E2E_CYCLES", "200"))),
    # A measurement for BENCHMARKS.md, not run by the test suite:
    # E2E_ROOMS=10 [E2E_VIA=track] unshare -n vendor/e2e-venv/bin/python tests/e2e/run.py BIN
    # room_load
    "room_load": lambda ctx: room_load(ctx, int(os.environ.get("E2E_ROOMS", "10")),
                                       via=os.environ.get("E2E_VIA", "data")),
}


async def run_scenarios(binary, names, scenarios, start_server, make_ctx, bridge_options=None):
    """The harness's one way of running scenarios: this namespace's network, the gRPC stubs, a
    server (`start_server(tmp)`, awaited; it has `stop()` and `tail()`), the release bridge,
    then each scenario with a 600 s limit, its duration reported. On a failure, or a panic in
    the bridge's log, the tails of the bridge's and the server's logs are shown."""
    netns_setup()
    with tempfile.TemporaryDirectory() as tmp:
        pb, pbg = load_stubs(tmp)
        server = await start_server(tmp)
        bridge = Bridge(binary, tmp, **(bridge_options or {}))
        failed = ctx = None
        try:
            await bridge.wait_ready()
            ctx = make_ctx(pb, pbg, bridge, server)
            for name in names:
                started = time.monotonic()
                await asyncio.wait_for(scenarios[name](ctx), 600)
                result(f"{name}_seconds", f"{time.monotonic() - started:.1f}")
            check(bridge.proc.poll() is None, "the bridge exited")
            await ctx.channel.close()
        except BaseException as e:  # report, then show the logs
            failed = e
        finally:
            code = bridge.stop()
            # A scenario may have replaced the server (a restart): stop the one running.
            server = ctx.sfu if ctx is not None else server
            await server.stop()
            with open(os.path.join(tmp, "bridge.log")) as f:
                log = f.read()
            server_log = server.tail()
        if os.environ.get("E2E_SHOW_LOG"):
            print("---- bridge log ----\n" + log, flush=True)
        if failed is not None or "panicked" in log:
            print("---- bridge log (tail) ----\n" + log[-6000:], flush=True)
            print("---- server log (tail) ----\n" + server_log, flush=True)
            raise failed or AssertionError("the bridge panicked")
        check(code == 0, f"the bridge exited with {code} on SIGTERM")


async def start_mock(tmp):
    sfu = MockSfu(SFU_HOST, SFU_PORT)
    await sfu.start()
    return sfu


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    asyncio.run(run_scenarios(sys.argv[1], sys.argv[2:], SCENARIOS, start_mock, Ctx,
                              {"metrics": True}))
