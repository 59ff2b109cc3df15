"""The backend's side: the gRPC stubs, compiled from proto/ at the start of a run, and stock
grpcio with no options on the bridge's Unix socket, as the backend calls it; the calls and
streams scenarios make (join, stream, audio both ways, a stream read to its end); bridges of a
scenario's own."""

import asyncio
import os
import sys
import time

import grpc
from grpc_tools import protoc
from livekit import api

from harness import livekit_server, ROOT
from harness.audio import loud, Pacer, tone
from harness.bridge import Bridge, workers_of
from harness.livekit_server import token
from harness.phones import phone_for
from harness.report import check


def load_stubs(tmp):
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                      os.path.join(proto_dir, "livekit_bridge.proto")])
    check(rc == 0, "protoc failed")
    sys.path.insert(0, tmp)
    import livekit_bridge_pb2 as pb  # noqa: E402
    import livekit_bridge_pb2_grpc as pbg  # noqa: E402
    return pb, pbg


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
    """A run's backend: the stubs, one channel to the bridge `bridge` (stock grpcio, no
    options: it sends the socket path as :authority, src/authority.rs) and the server `sfu`
    whose rooms it joins. `join` is the server's (its tokens and its target's identity)."""

    def __init__(self, pb, pbg, bridge, sfu):
        self.pb, self.pbg, self.bridge, self.sfu = pb, pbg, bridge, sfu
        self.channel = grpc.aio.insecure_channel(f"unix://{bridge.socket}")
        self.stub = pbg.LiveKitBridgeStub(self.channel)

    async def join(self, user, identity=None):
        raise NotImplementedError

    async def joined(self, user):
        r = await self.join(user)
        check(r.success, f"JoinRoom failed: {r.error}")
        return r

    def stream(self, user):
        """Opens `user`'s StreamAudio: the call, and the queue its client chunks are sent from
        (None half-closes). The first chunk names the user."""
        queue = asyncio.Queue()
        first = self.pb.AudioChunk(user_id=user, sample_rate=16000, channels=1,
                                   timestamp_ms=int(time.time() * 1000))
        queue.put_nowait(first)

        call = self.stub.StreamAudio(Requests(queue))
        return call, queue


class RealCtx(Ctx):
    """The backend's calls, with tokens LiveKit's server accepts: the bridge joins user `u` as
    `cloud-agent:u` in room `u`, its target being the phone `phone-u`."""

    async def join(self, user, identity=None, tok=None, target=None):
        identity = identity or f"cloud-agent:{user}"
        return await self.stub.JoinRoom(self.pb.JoinRoomRequest(
            user_id=user, room_name=user, token=tok or token(identity, user),
            livekit_url=self.sfu.url, target_identity=target or f"phone-{user}"), timeout=20)


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


async def session_state(ctx, user):
    """GetStatus's x-bridge-session-state."""
    call = ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
    await call
    return dict(await call.initial_metadata()).get("x-bridge-session-state")


async def wait_for_count(ctx, user, want):
    """Waits (at most 5 s) until GetStatus gives `user`'s participant_count as `want`; returns
    it."""
    for _ in range(100):
        status = await ctx.stub.GetStatus(ctx.pb.BridgeStatusRequest(user_id=user))
        if status.participant_count == want:
            return want
        await asyncio.sleep(0.05)
    check(False, f"participant_count stayed {status.participant_count}, wanted {want}")


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


async def own_bridge(ctx, settings=None, metrics=False):
    """A bridge in a network namespace of its own, behind a veth pair (network.py's OwnNetwork),
    so its link to LiveKit can go down alone; `settings` go to its environment; with `metrics`
    its `metric` reads its /metrics."""
    bridge = Bridge(ctx.bridge.binary, ctx.bridge.tmp, name=f"own{time.monotonic_ns()}",
                    own_network=True, settings=settings, metrics=metrics)
    await bridge.wait_ready()
    return bridge, RealCtx(ctx.pb, ctx.pbg, bridge, ctx.sfu)


async def let_go(phone, bctx, bridge):
    """Ends a scenario's phone and its bridge of its own."""
    await phone.leave()
    await bctx.channel.close()
    bridge.stop()


async def warm_up_workers(ctx):
    """Joins one room per room worker and leaves them: every worker's library is loaded."""
    await ctx.joined("warmup0")
    warm = [f"warmup{n}" for n in range(len(workers_of(ctx.bridge.proc.pid)))]
    for u in warm[1:]:
        await ctx.joined(u)
    for u in warm:
        await ctx.stub.LeaveRoom(ctx.pb.LeaveRoomRequest(user_id=u, reason="warmup"))
    await asyncio.sleep(1.0)


class Files:
    """Plain HTTP on the namespace's address for PlayAudio's files (the bridge's egress policy
    is opened to 10.99.0.0/16 by bridge.py's Bridge)."""

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
