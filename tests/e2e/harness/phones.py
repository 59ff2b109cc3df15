"""The user's phone, real LiveKit clients joined as the user's target identity:
- `Phone`, LiveKit's Python SDK (the `livekit` wheel whose library the bridge also loads): it
  sends the microphone as the phone apps do (lossy data packets without a topic: a 1-byte
  rolling sequence number and 320 bytes of 16 kHz mono PCM16, 100 a second), or publishes it as
  an Opus microphone track; and it subscribes to the bridge's tracks and records what it hears,
  at 16 kHz mono, with the time each 10 ms arrived;
- `NetPhone`, the Go phone (tests/phones, LiveKit's Go SDK) in a network namespace of its own,
  for outages of the phone's link alone."""

import asyncio
import os
import time

from livekit import rtc

from harness import livekit_server, ROOT
from harness.audio import marked
from harness.livekit_server import LiveKitServer
from harness.network import OwnNetwork
from harness.report import check


RATE = 16000
# 1 s of 440 Hz as 20 ms Opus packets, which the Go phones loop as their microphone track.
OPUS = os.path.join(ROOT, "tests/phones/tone-440.opus")


FRAME = 160  # samples in 10 ms


class Phone:
    """`listen`: subscribe to the bridge's tracks (every other participant's are ignored)."""

    def __init__(self, identity, room, listen=True):
        self.identity, self.room_name, self.listen = identity, room, listen
        self.room = rtc.Room()
        self.heard = {}  # track name -> [(arrival, samples: list of int)]
        self.heard_from = {}  # the bridge's participant SID -> the same, of all its tracks
        self.readers = {}  # track SID -> (its audio stream, the task reading it)
        self.disconnected = None

    async def join(self, token=None):
        token = token or livekit_server.token(self.identity, self.room_name)
        self.room.on("track_subscribed", self._subscribed)
        self.room.on("track_unsubscribed", self._unsubscribed)
        self.room.on("disconnected", lambda reason: setattr(self, "disconnected", reason))
        await self.room.connect(livekit_server.LiveKitServer.url, token,
                                rtc.RoomOptions(auto_subscribe=self.listen))
        return self

    def _subscribed(self, track, publication, participant):
        if track.kind != rtc.TrackKind.KIND_AUDIO or not participant.identity.startswith(
                "cloud-agent:"):
            return
        lists = (self.heard.setdefault(publication.name, []),
                 self.heard_from.setdefault(participant.sid, []))
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=10)
        self.readers[track.sid] = (stream, asyncio.ensure_future(self._read(stream, lists)))

    def _unsubscribed(self, track, publication, participant):
        """Closes the track's stream: the SDK does not end it when the track goes, and every
        open stream filters every event the library sends this process, so a phone that keeps
        them slows down with each track it ever heard until it hears no more. The reader is
        left to take what the stream already holds (the end of what was said) before it ends."""
        stream, _ = self.readers.pop(track.sid, (None, None))
        if stream is not None:
            asyncio.ensure_future(stream.aclose())

    async def _read(self, stream, lists):
        async for event in stream:
            frame = (time.monotonic(), list(event.frame.data))
            for frames in lists:
                frames.append(frame)

    def heard_loud_from(self, sid, level=0.05):
        """Whether anything loud was heard from the bridge's participant `sid`."""
        return any(max(map(abs, block), default=0) > level * 32767
                   for _, block in self.heard_from.get(sid, []))

    def samples(self, track):
        return [s for _, block in self.heard.get(track, []) for s in block]

    async def send_data(self, payload, reliable=False, topic=""):
        await self.room.local_participant.publish_data(payload, reliable=reliable, topic=topic)

    async def send_microphone(self, seconds, pcm=None, start_seq=0):
        """Data packets as the phone sends them, 100 a second, paced by the clock: returns the
        payloads sent. `pcm` (16 kHz mono PCM16 LE) is sent in 320-byte pieces; if None, each
        packet is silence but for its first sample, which counts the packets from `start_seq`
        (the 1-byte sequence number is cut by the payload rule, so the client counts losses
        by this)."""
        sent = []
        frames = int(seconds * 100)
        start = time.monotonic()
        for i in range(frames):
            if pcm is not None:
                piece = pcm[i * 320:(i + 1) * 320]
            else:
                piece = ((start_seq + i) % 32768).to_bytes(2, "little") + bytes(318)
            payload = bytes([(start_seq + i) % 256]) + piece
            await self.send_data(payload)
            sent.append(payload)
            wait = start + (i + 1) * 0.01 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return sent

    async def publish_microphone(self, pcm, name="microphone"):
        """Publishes a microphone track and returns the publication and a coroutine that feeds
        it `pcm` (16 kHz mono PCM16 LE) in real time (`None` for a track left silent, which the
        library feeds with silence); the track stays published after the feed."""
        source = rtc.AudioSource(RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track(name, source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await self.room.local_participant.publish_track(track, options)
        self.source = source
        return publication, None if pcm is None else self._feed(source, pcm)

    async def _feed(self, source, pcm):
        for i in range(0, len(pcm) // 2 - FRAME + 1, FRAME):
            frame = rtc.AudioFrame(pcm[i * 2:(i + FRAME) * 2], RATE, 1, FRAME)
            await source.capture_frame(frame)

    async def leave(self):
        for stream, task in self.readers.values():
            task.cancel()
            asyncio.ensure_future(stream.aclose())
        self.readers.clear()
        await self.room.disconnect()


async def phone_for(user, identity=None, listen=True):
    return await Phone(identity or f"phone-{user}", user, listen).join()


async def send_marked(phone, count, stop=None):
    """`count` marked packets, 100 a second (until `stop` is set, if given)."""
    t0 = time.monotonic()
    for n in range(count):
        if stop is not None and stop.is_set():
            return
        await phone.send_data(marked(n))
        await asyncio.sleep(max(0, t0 + (n + 1) * 0.01 - time.monotonic()))


class NetPhone:
    """The Go phone (tests/phones, LiveKit's Go SDK) for `user`, in a network namespace of its
    own behind a veth pair (network.py's OwnNetwork), so its link to LiveKit can go down alone
    (`Phone` loads LiveKit's library into this process and shares its network). It
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


class GoPhones:
    """`rooms` Go phones (tests/phones) in one process in this namespace: phone i joins room
    `<prefix>-<i>` as `phone-<i>`. `mode` "data": the microphone as data packets, 100 a second,
    each packet's first sample its number (`-count`), so a client counts the frames it lost;
    "track": an Opus microphone track (pre-encoded, looped). With `listen` each phone subscribes
    to the bridge's track and counts its RTP; `heard` is then how many tracks have sent any."""

    def __init__(self, rooms, prefix, tmp, mode="data", listen=False):
        self.rooms, self.prefix, self.tmp = rooms, prefix, tmp
        self.mode, self.listen = mode, listen
        self.heard = 0

    async def start(self):
        log = open(os.path.join(self.tmp, f"phones-{self.prefix}.log"), "w")
        args = ["-mode", self.mode]
        args += ["-count"] if self.mode == "data" else ["-opus", OPUS]
        args += ["-listen", "-report", "100ms"] if self.listen else []
        self.proc = await asyncio.create_subprocess_exec(
            os.path.join(ROOT, "vendor/phones"), "-url", LiveKitServer.url,
            "-key", livekit_server.KEY, "-secret", livekit_server.SECRET,
            "-rooms", str(self.rooms), "-prefix", self.prefix, *args,
            stdout=asyncio.subprocess.PIPE, stderr=log)
        ready = (await asyncio.wait_for(self.proc.stdout.readline(), 120)).split()
        check(ready == [b"READY", str(self.rooms).encode()],
              f"the Go phones did not all join: {ready}")
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        while line := await self.proc.stdout.readline():
            words = line.split()
            if words[:1] == [b"AT"] and len(words) >= 5:
                self.heard = int(words[4])

    def room(self, i):
        return f"{self.prefix}-{i}"

    async def stop(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                raise
