"""Signals and their analysis: tones and ramps to send, and what was heard of them (span, pitch,
level, the first 10 ms), the contract's payload rule, a real-time sender's clock."""

import asyncio
import math
import time

from harness.report import check, result


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


def loud(chunk, level=0.05):
    """Whether a 16 kHz PCM16 chunk holds sound (RMS over `level` of full scale), not the
    library's concealment fading to silence."""
    pcm = chunk.pcm_data
    n = len(pcm) // 2
    if n == 0:
        return False
    total = sum(int.from_bytes(pcm[i:i + 2], "little", signed=True) ** 2 for i in range(0, 2 * n, 2))
    return math.sqrt(total / n) / 32768.0 > level


def heard_whole(tag, samples, seconds, hz, tolerance_s):
    """Checks `samples` hold `seconds` of a tone at `hz` and half scale (RMS 0.354), from its
    first loud 10 ms to its last, and reports what was heard under `tag`."""
    heard_s, got_hz, rms = heard_span(samples)
    result(f"{tag}_heard_s", f"{heard_s:.3f}")
    result(f"{tag}_hz", f"{got_hz:.1f}")
    result(f"{tag}_rms", f"{rms:.3f}")
    # Opus rings out after a tone's abrupt end: up to two more loud 10 ms blocks at the end.
    check(-tolerance_s <= heard_s - seconds <= tolerance_s + 0.02,
          f"heard {heard_s:.3f} s of {seconds} s")
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


def ramp_heard(frames, seconds):
    """What a phone heard of a rising ramp of `seconds` (audio.py's `ramp`) in `frames`, its
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


def pcm_of(chunks):
    return [int.from_bytes(c.pcm_data[i:i + 2], "little", signed=True)
            for _, c in chunks for i in range(0, len(c.pcm_data), 2)]


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


def marked(n):
    """A phone's data packet whose PCM says it is one: "DATA" in bytes 4 to 8 after the
    payload rule, which no decoded frame of a tone holds."""
    return bytes([n % 256]) + n.to_bytes(4, "little") + b"DATA" + bytes(312)


def is_data(chunk):
    return chunk.pcm_data[4:8] == b"DATA"
