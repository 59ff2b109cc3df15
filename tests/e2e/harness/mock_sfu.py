"""A mock LiveKit SFU. TEST-ONLY CODE: it exists for the few faults LiveKit's own server cannot
make on demand (scenarios/mock.py says which), with LiveKit's real client library inside the
bridge.

It speaks just enough of LiveKit's v0 signalling (`/rtc` over a WebSocket, protobuf messages from
the `livekit-protocol` package) and WebRTC (aiortc) for a client to:
- join a room (JoinResponse with the other participants; subscriber-primary, two peer
  connections: the server offers the subscriber connection with `_reliable` and `_lossy` data
  channels, the client offers its publisher connection);
- receive data packets sent as any identity, on either channel, with or without a topic;
- publish audio tracks, whose frames the mock counts;
- be disconnected by the server with a reason (room deleted, duplicate identity, ...); a join
  with an identity already in the room kicks the older participant with DUPLICATE_IDENTITY,
  as LiveKit does.

A resume (`/rtc?reconnect=1`) is answered as by a LiveKit node that cannot resume the session:
a leave with action RECONNECT, after which the client reconnects in full (a new join, new peer
connections, its tracks republished). A real resume needs an ICE restart, which aiortc does not
implement.

It is not an SFU: no forwarding between participants, no simulcast, no session resume, no token
verification (it reads the identity from the token's `sub` claim), no TURN, one room.
"""

import asyncio
import base64
import json
import time

from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models, rtc


def identity_from_token(token: str) -> str:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return json.loads(base64.urlsafe_b64decode(payload)).get("sub", "")
    except (IndexError, ValueError):
        return ""


def make_token(identity: str, room: str) -> str:
    """An access token of LiveKit's shape (the mock does not verify its signature)."""

    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": identity, "iss": "mock", "nbf": now - 10, "exp": now + 3600,
              "video": {"room": room, "roomJoin": True}}
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.bW9jaw"


class ReceivedTrack:
    """One track the bridge published: decoded as a participant's client would, and counted."""

    def __init__(self, name: str):
        self.name = name
        self.frames = 0


class Participant:
    def __init__(self, sfu, ws, identity):
        self.sfu = sfu
        self.ws = ws
        self.identity = identity
        self.sid = f"PA_{identity}"
        self.subscriber = RTCPeerConnection()
        self.publisher = None
        self.reliable = self.subscriber.createDataChannel("_reliable", ordered=True)
        self.lossy = self.subscriber.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
        self.channels_open = asyncio.Event()
        self.track_names = {}  # cid -> name
        self.tracks = {}  # name -> ReceivedTrack
        self.pending_candidates = {0: [], 1: []}
        self.closed = asyncio.Event()

        @self.lossy.on("open")
        def _open():
            self.channels_open.set()

    async def send(self, **kw):
        await self.ws.send_bytes(rtc.SignalResponse(**kw).SerializeToString())

    async def start(self):
        others = [self._info(i) for i in self.sfu.other_identities]
        await self.send(join=rtc.JoinResponse(
            room=models.Room(sid="RM_mock", name=self.sfu.room_name),
            participant=models.ParticipantInfo(sid=self.sid, identity=self.identity,
                                               name=self.identity,
                                               state=models.ParticipantInfo.JOINED),
            other_participants=others,
            server_version="1.8.0",
            subscriber_primary=True,
            ping_timeout=self.sfu.ping_timeout,
            ping_interval=self.sfu.ping_interval,
        ))
        offer = await self.subscriber.createOffer()
        await self.subscriber.setLocalDescription(offer)
        await self.send(offer=rtc.SessionDescription(type="offer",
                                                     sdp=self.subscriber.localDescription.sdp))

    async def add_candidate(self, pc, init):
        c = json.loads(init)
        text = c.get("candidate", "")
        if not text:
            return
        cand = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
        cand.sdpMid = c.get("sdpMid")
        cand.sdpMLineIndex = c.get("sdpMLineIndex")
        await pc.addIceCandidate(cand)

    async def on_request(self, req: rtc.SignalRequest):
        which = req.WhichOneof("message")
        if which == "answer":
            await self.subscriber.setRemoteDescription(
                RTCSessionDescription(sdp=req.answer.sdp, type="answer"))
            for init in self.pending_candidates[1]:
                await self.add_candidate(self.subscriber, init)
            self.pending_candidates[1] = []
        elif which == "offer":
            if self.publisher is None:
                self.publisher = RTCPeerConnection()
                self.publisher.on("track", self.on_track)
            await self.publisher.setRemoteDescription(
                RTCSessionDescription(sdp=req.offer.sdp, type="offer"))
            for init in self.pending_candidates[0]:
                await self.add_candidate(self.publisher, init)
            self.pending_candidates[0] = []
            answer = await self.publisher.createAnswer()
            await self.publisher.setLocalDescription(answer)
            await self.send(answer=rtc.SessionDescription(
                type="answer", sdp=self.publisher.localDescription.sdp, id=req.offer.id))
        elif which == "trickle":
            target = req.trickle.target  # 0 publisher, 1 subscriber
            pc = self.publisher if target == 0 else self.subscriber
            ready = pc is not None and pc.remoteDescription is not None
            if ready:
                await self.add_candidate(pc, req.trickle.candidateInit)
            else:
                self.pending_candidates[target].append(req.trickle.candidateInit)
        elif which == "add_track":
            t = req.add_track
            sid = f"TR_{t.cid}"
            self.track_names[t.cid] = t.name
            self.tracks.setdefault(t.name, ReceivedTrack(t.name))
            await self.send(track_published=rtc.TrackPublishedResponse(
                cid=t.cid, track=models.TrackInfo(sid=sid, name=t.name, type=models.AUDIO,
                                                  source=t.source)))
        elif which == "ping":
            await self.send(pong=int(time.time() * 1000))
        elif which == "ping_req":
            await self.send(pong_resp=rtc.Pong(last_ping_timestamp=req.ping_req.timestamp,
                                               timestamp=int(time.time() * 1000)))
        elif which == "leave":
            self.closed.set()

    def on_track(self, track):
        if track.kind != "audio":
            return
        name = self.track_names.get(track.id)
        if name is None:
            # The client's track id is the cid of its AddTrackRequest; fall back to order.
            name = next((n for n in self.track_names.values() if not self.tracks[n].frames),
                        track.id)
        received = self.tracks.setdefault(name, ReceivedTrack(name))

        async def read():
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                received.frames += 1

        asyncio.ensure_future(read())

    async def send_data(self, identity, payload, topic=None, reliable=False):
        await asyncio.wait_for(self.channels_open.wait(), 10)
        kind = models.DataPacket.RELIABLE if reliable else models.DataPacket.LOSSY
        user = models.UserPacket(payload=payload, participant_identity=identity)
        if topic is not None:
            user.topic = topic
        packet = models.DataPacket(kind=kind, participant_identity=identity, user=user)
        (self.reliable if reliable else self.lossy).send(packet.SerializeToString())

    def _info(self, identity, joined=True, sid=None):
        """`identity` as the server describes it (it publishes nothing)."""
        state = models.ParticipantInfo.ACTIVE if joined else models.ParticipantInfo.DISCONNECTED
        return models.ParticipantInfo(sid=sid or f"PA_{identity}", identity=identity,
                                      name=identity, state=state)

    async def server_disconnect(self, reason):
        await self.send(leave=rtc.LeaveRequest(reason=reason, action=rtc.LeaveRequest.DISCONNECT,
                                               can_reconnect=False))
        await asyncio.sleep(0.1)
        await self.close()

    async def close(self):
        self.closed.set()
        if not self.ws.closed:
            await self.ws.close()
        await self.subscriber.close()
        if self.publisher is not None:
            await self.publisher.close()


class MockSfu:
    def __init__(self, host, port, room_name="room", other_identities=("target",)):
        self.host, self.port = host, port
        self.room_name = room_name
        self.other_identities = list(other_identities)
        self.participants = {}  # identity -> Participant (latest)
        self.joined = asyncio.Queue()
        self.joins = 0
        self.runner = None
        self.kick_delay = 0.0  # seconds between a newer join and the older participant's kick
        # LiveKit's defaults; a client that hears nothing for ping_timeout s reconnects.
        self.ping_interval, self.ping_timeout = 5, 15

    async def kick(self, older):
        await asyncio.sleep(self.kick_delay)
        await older.server_disconnect(models.DisconnectReason.DUPLICATE_IDENTITY)

    @property
    def url(self):
        return f"ws://{self.host}:{self.port}"

    async def start(self):
        app = web.Application()
        app.router.add_get("/rtc", self.rtc)
        app.router.add_get("/rtc/validate", self.validate)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    def tail(self):
        """The mock logs to the test's own output: nothing more to show."""
        return ""

    async def stop(self):
        for p in list(self.participants.values()):
            await p.close()
        if self.runner:
            await self.runner.cleanup()

    async def validate(self, request):
        return web.Response(text="ok")

    async def rtc(self, request):
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if request.query.get("reconnect") == "1":
            # A resume. aiortc cannot restart ICE, so the mock cannot resume a session; it
            # answers as a LiveKit node that cannot (the session is gone, or on another node):
            # leave with action RECONNECT, and the client reconnects in full, with a new join.
            await ws.send_bytes(rtc.SignalResponse(leave=rtc.LeaveRequest(
                reason=models.DisconnectReason.STATE_MISMATCH,
                action=rtc.LeaveRequest.RECONNECT, can_reconnect=True)).SerializeToString())
            await ws.close()
            return ws
        token = request.query.get("access_token", "")
        auth = request.headers.get("Authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:]
        identity = identity_from_token(token) or request.query.get("identity", "anonymous")
        p = Participant(self, ws, identity)
        older = self.participants.get(identity)
        self.participants[identity] = p
        if older is not None and not older.closed.is_set():
            # As LiveKit does: a newer participant with the same identity replaces the older,
            # which is told why while the newer one's join goes on (after `kick_delay` s).
            asyncio.ensure_future(self.kick(older))
        self.joins += 1
        await p.start()
        await self.joined.put(p)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await p.on_request(rtc.SignalRequest.FromString(msg.data))
                elif msg.type == WSMsgType.TEXT:
                    await p.on_request(rtc.SignalRequest.FromString(msg.data.encode()))
        finally:
            await p.close()
        return ws
