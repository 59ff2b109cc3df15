"""The backend's own client for many users at once: tests/node/backend_users.mjs, @grpc/grpc-js
as the backend uses it, one client per user, rejoining 2 s after a stream's error status and
never after a clean end. This side reads what it prints as it happens and asks it for the frames
each user lost in a window of time."""

import asyncio
import json
import os
import time

from harness import ROOT
from harness.report import check

SCRIPT = os.path.join(ROOT, "tests/node/backend_users.mjs")


class NodeBackend:
    """`users`: JoinRoom requests (dicts of the proto's fields), one per user. Times are
    time.monotonic()'s (the Node side reads the same clock). `events[user]` holds, in order,
    (kind, time, rest) for kind JOINED, AUDIO, END (rest: code name, end reason, details),
    REJOIN and REFUSED."""

    def __init__(self, socket, users, tmp):
        self.socket, self.users, self.tmp = socket, users, tmp
        self.events = {u["user_id"]: [] for u in users}
        self.answers = asyncio.Queue()

    async def start(self, timeout=60):
        """Starts the users' backends; returns once every user has joined and heard audio."""
        path = os.path.join(self.tmp, f"users-{id(self)}.json")
        with open(path, "w") as f:
            json.dump(self.users, f)
        self.log = open(os.path.join(self.tmp, "node-backend.log"), "w")
        self.proc = await asyncio.create_subprocess_exec(
            "node", SCRIPT, f"unix://{self.socket}", path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=self.log)
        self.reader = asyncio.ensure_future(self._read())
        for _ in range(int(timeout / 0.05)):
            if all(self.first("AUDIO", u) is not None for u in self.events):
                return self
            check(self.proc.returncode is None, "the Node backend exited")
            await asyncio.sleep(0.05)
        missing = [u for u in self.events if self.first("AUDIO", u) is None]
        raise AssertionError(f"no audio in {timeout} s for {missing}: {self.refusals()}")

    async def _read(self):
        while line := await self.proc.stdout.readline():
            kind, _, rest = line.decode().rstrip("\n").partition(" ")
            if kind in ("WINDOW", "LAG", "OK"):
                await self.answers.put((kind, rest))
                continue
            user, t, *more = rest.split(" ", 4 if kind == "END" else 2)
            if kind == "END":
                code, reason, details = more
                more = (code, None if reason == "-" else reason, json.loads(details))
            self.events[user].append((kind, float(t), tuple(more)))

    def first(self, kind, user, after=0.0):
        """The first event `kind` of `user` at or after `after`: (time, rest), or None."""
        return next(((t, rest) for k, t, rest in self.events[user] if k == kind and t >= after),
                    None)

    def ended_since(self, t):
        """The users whose stream ended at or after `t`: {user: (time, code, reason, details)}."""
        ends = {}
        for user in self.events:
            end = self.first("END", user, t)
            if end is not None:
                ends[user] = (end[0], *end[1])
        return ends

    def refusals(self):
        return {u: [r for k, _, r in e if k == "REFUSED"] for u, e in self.events.items()}

    async def _ask(self, command):
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        lines = []
        while True:
            kind, rest = await asyncio.wait_for(self.answers.get(), 30)
            if kind == "OK":
                return lines
            lines.append((kind, rest))

    async def window(self, t0, t1, during=None):
        """{user: (frames lost, longest gap in ms, longest gap overlapping `during` in ms)} over
        chunks that arrived in [t0, t1] (`during`: a (start, end) pair; the whole window when
        None); `self.lag_ms` is then the longest the Node process's event loop was held up in
        it."""
        a, b = during or (t0, t1)
        out = {}
        for kind, line in await self._ask(f"window {t0} {t1} {a} {b}"):
            if kind == "LAG":
                self.lag_ms = int(line)
                continue
            user, lost, gap, overlapping = line.split()
            out[user] = (int(lost), int(gap), int(overlapping))
        return out

    async def leave(self):
        """LeaveRoom for every user, each stream half-closed first; returns once all ended."""
        t = time.monotonic()
        try:
            await self._ask("leave")
        except asyncio.TimeoutError:
            open_ = [u for u in self.events if u not in self.ended_since(t)]
            raise AssertionError(f"streams still open 30 s after LeaveRoom: {open_}")
        await asyncio.wait_for(self.proc.wait(), 10)
        await self.reader

    def stop(self):
        if getattr(self, "proc", None) is not None and self.proc.returncode is None:
            self.proc.kill()
