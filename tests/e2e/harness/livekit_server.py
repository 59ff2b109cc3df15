"""LiveKit's own server for the end-to-end tests: vendor/livekit-server (v1.13.5, built by
scripts/setup from tests/livekit-server/go.mod), started as an operator runs a single node with
tests/e2e/livekit.yaml, inside the test's network namespace. TEST-ONLY CODE.

Tokens are signed with the config's key; the server API (RoomService) is LiveKit's Python
client, `livekit-api`, signed the same way."""

import asyncio
import datetime
import os
import signal
import subprocess
import urllib.request

from livekit import api

from harness import E2E, ROOT
from harness.network import HOST

BINARY = os.path.join(ROOT, "vendor/livekit-server")
CONFIG = os.path.join(E2E, "livekit.yaml")
VERSION = "1.13.5"
PORT = 7880
KEY = "e2e-key"
SECRET = "e2e-secret-for-tests-only-0123456789abcdef"


def token(identity, room, ttl_s=3600, secret=SECRET, kind=None):
    """A join token for `identity` in `room`, valid for `ttl_s` seconds (negative: already
    expired), signed with `secret`."""
    t = (api.AccessToken(KEY, secret)
         .with_identity(identity)
         .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True,
                                      can_subscribe=True, can_publish_data=True)))
    if kind is not None:
        t = t.with_kind(kind)
    if ttl_s < 0:
        # AccessToken refuses a negative lifetime; a token issued long ago has expired.
        t = t.with_ttl(datetime.timedelta(seconds=1))
        import jwt  # pyjwt, a dependency of livekit-api
        claims = jwt.decode(t.to_jwt(), secret, algorithms=["HS256"],
                            options={"verify_exp": False})
        claims["exp"] = int(datetime.datetime.now().timestamp()) + ttl_s
        claims["nbf"] = claims["exp"] - 3600
        return jwt.encode(claims, secret, algorithm="HS256")
    return t.with_ttl(datetime.timedelta(seconds=ttl_s)).to_jwt()


class LiveKitServer:
    url = f"ws://{HOST}:{PORT}"

    def __init__(self, tmp):
        self.log_path = os.path.join(tmp, "livekit-server.log")
        self.proc = None
        self.starts = 0

    async def start(self, secret=SECRET):
        """Starts the server; `secret` other than the config's is a key rotated by the operator
        (the same key name, a new secret: tokens signed with the old one are refused)."""
        out = subprocess.run([BINARY, "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.strip().endswith(VERSION), f"not the pinned server: {out.stdout!r}"
        self.starts += 1
        log = open(self.log_path, "a")
        keys = [] if secret == SECRET else ["--keys", f"{KEY}: {secret}"]
        self.proc = subprocess.Popen([BINARY, "--config", CONFIG] + keys, stdout=log,
                                     stderr=subprocess.STDOUT)
        for _ in range(200):
            if self._answers():
                return
            assert self.proc.poll() is None, f"livekit-server exited: {self.tail()}"
            await asyncio.sleep(0.05)
        raise AssertionError(f"livekit-server never answered GET /: {self.tail()}")

    def _answers(self):
        try:
            with urllib.request.urlopen(f"http://{HOST}:{PORT}/", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self):
        return api.LiveKitAPI(f"http://{HOST}:{PORT}", KEY, SECRET)

    async def stop(self, how="term"):
        """Stops the server: `term` as an operator does (LiveKit drains on the first SIGTERM
        and closes every room with SERVER_SHUTDOWN on the second), `kill` as a crash does."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if how == "kill":
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
        for _ in range(200):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        self.proc.kill()
        self.proc.wait()

    def tail(self, n=4000):
        try:
            with open(self.log_path) as f:
                return f.read()[-n:]
        except OSError:
            return ""
