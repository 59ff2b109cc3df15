"""A real phone: LiveKit's Python SDK (the `livekit` wheel whose library the bridge also loads)
joined as the user's target identity. It sends the microphone as the phone apps do (lossy data
packets without a topic: a 1-byte rolling sequence number and 320 bytes of 16 kHz mono PCM16,
100 a second), or publishes it as an Opus microphone track; and it subscribes to the bridge's
tracks and records what it hears, at 16 kHz mono, with the time each 10 ms arrived.
TEST-ONLY CODE."""

import asyncio
import time

from livekit import rtc

import livekit_server

RATE = 16000
FRAME = 160  # samples in 10 ms


class Phone:
    """`listen`: subscribe to the bridge's tracks (every other participant's are ignored)."""

    def __init__(self, identity, room, listen=True):
        self.identity, self.room_name, self.listen = identity, room, listen
        self.room = rtc.Room()
        self.heard = {}  # track name -> [(arrival, samples: list of int)]
        self.readers = []
        self.disconnected = None

    async def join(self, token=None):
        token = token or livekit_server.token(self.identity, self.room_name)
        self.room.on("track_subscribed", self._subscribed)
        self.room.on("disconnected", lambda reason: setattr(self, "disconnected", reason))
        await self.room.connect(livekit_server.LiveKitServer.url, token,
                                rtc.RoomOptions(auto_subscribe=self.listen))
        return self

    def _subscribed(self, track, publication, participant):
        if track.kind != rtc.TrackKind.KIND_AUDIO or not participant.identity.startswith(
                "cloud-agent:"):
            return
        frames = self.heard.setdefault(publication.name, [])
        self.readers.append(asyncio.ensure_future(self._read(track, frames)))

    async def _read(self, track, frames):
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=10)
        async for event in stream:
            frames.append((time.monotonic(), list(event.frame.data)))

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
        for r in self.readers:
            r.cancel()
        await self.room.disconnect()
