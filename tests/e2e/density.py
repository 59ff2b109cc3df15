"""The density benchmark: N real rooms on LiveKit's own server, each with one phone and the
bridge's session for its user, by room shape. TEST-ONLY CODE.

    unshare -n vendor/e2e-venv/bin/python tests/e2e/density.py <loadgen binary> \\
        [--shapes S1,S2,...] [--rooms 10,25,...] [--seconds 10] [--env KEY=VALUE ...]

Runs in the network namespace `unshare -n` made (harness/network.py's `netns_setup`: loopback
and a veth pair). One LiveKit server (harness/livekit_server.py) serves every point. For each
shape and N: the phones (vendor/phones, tests/phones: N phones in one Go process) join rooms
density-0..N-1; then the load generator (benches/loadgen.rs, built by `cargo bench --no-run`)
starts the bridge, joins user u to room density-u targeting phone-u, streams every user's audio,
and measures the bridge, the server and the phones over the same window. `--env` settings go
to the bridge.

Shapes (what production looks like: most rooms listening most of the time):
  S1 joined, silent;
  S2 listening: the phone's data packets, 100 a second;
  S3 listening: the phone's Opus microphone track;
  S4 S2, and the bridge's published track played 2 s once and is now idle;
  S5 S2, and the bridge speaks 20 % of the time (2 s every 10 s);
  S6 audio both ways all the time.
In S4 to S6 the phones subscribe to the bridge's track and count its RTP.

Prints one table row per point, and `RESULT density_<shape>_<n>_<key>=value` lines."""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import ROOT, livekit_server  # noqa: E402
from harness.livekit_server import LiveKitServer, token  # noqa: E402
from harness.network import netns_setup  # noqa: E402
from harness.report import result  # noqa: E402

PHONES = os.path.join(ROOT, "vendor/phones")
OPUS = os.path.join(ROOT, "tests/phones/tone-440.opus")

# shape: (phone mode, phones listen, what the backend sends, frames/s each room delivers)
SHAPES = {
    "S1": ("silent", False, "silent", 0),
    "S2": ("data", False, "silent", 100),
    "S3": ("track", False, "silent", 100),
    "S4": ("data", True, "once", 100),
    "S5": ("data", True, "some", 100),
    "S6": ("data", True, "always", 100),
}


def results(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("RESULT ") and "=" in line:
            k, v = line[len("RESULT "):].split("=", 1)
            out[k] = v
    return out


async def point(loadgen, shape, rooms, seconds, tmp, server, bridge_env):
    mode, listen, speak, fps = SHAPES[shape]
    with open(os.path.join(tmp, "phones.log"), "a") as log:
        phones = subprocess.Popen(
            [PHONES, "-url", LiveKitServer.url, "-key", livekit_server.KEY,
             "-secret", livekit_server.SECRET, "-rooms", str(rooms), "-mode", mode,
             "-opus", OPUS] + (["-listen"] if listen else []),
            stdout=subprocess.PIPE, stderr=log, text=True)
    ready = phones.stdout.readline().split()
    if ready[:1] != ["READY"] or int(ready[1]) != rooms:
        phones.kill()
        raise AssertionError(f"phones: {ready} of {rooms} joined; see {tmp}/phones.log")
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        for u in range(rooms):
            f.write(token(f"cloud-agent:user-{u}", f"density-{u}", ttl_s=24 * 3600) + "\n")
    env = dict(os.environ)
    env.update({
        "LOADGEN_LIVEKIT_URL": LiveKitServer.url,
        "LOADGEN_TOKENS": tokens,
        "LOADGEN_SPEAK": speak,
        "LOADGEN_EXPECT_FPS": str(fps),
        "LOADGEN_SECONDS": str(seconds),
        "LOADGEN_ROUNDS": "1",
        "LOADGEN_WATCH": f"server={server.proc.pid},phones={phones.pid}",
        "LIVEKIT_FFI_LIB": os.path.join(ROOT, "vendor/livekit-ffi/liblivekit_ffi.so"),
        "BRIDGE_SHUTDOWN_TIMEOUT_MS": "2000",
    })
    env.update(bridge_env)
    run = subprocess.run([loadgen, "--bench"], env=env, capture_output=True, text=True)
    phones.terminate()
    phone_out, _ = phones.communicate(timeout=60)
    if run.returncode != 0:
        raise AssertionError(f"loadgen failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-4000:]}")
    failures = [l for l in run.stderr.splitlines() if l.startswith("loadgen: JoinRoom")]
    if failures:
        print(f"{len(failures)} joins failed, the first: {failures[0]}", flush=True)
    r = results(run.stdout)
    r.update(results(phone_out))
    print(run.stdout.split("RESULT ", 1)[0], flush=True)
    return r


def row(shape, n, r):
    wall = float(r["wall_s"])
    failed = int(r["joins_failed"])
    n -= failed  # the per-room figures are of the rooms joined
    cores = float(r["bridge_cores"])
    rss = (int(r["rss_loaded_kib"]) - int(r["rss_idle_kib"])) / n
    delivered = (int(r["frames"]) / float(r["frames_expected"]) * 100
                 if float(r["frames_expected"]) > 0 else float("nan"))
    threads = sorted(((k[len("thread["):-1], *map(float, v.split(","))) for k, v in r.items()
                      if k.startswith("thread[")), key=lambda t: -t[2])
    top = ", ".join(f"{name} {c:.2f}" for name, _, c in threads[:3] if c > 0)
    heard = int(r.get("phones_rtp_packets", "0")) / n / float(r.get("phones_wall_s", wall))
    return (f"| {shape} | {n}{f' ({failed} failed to join)' if failed else ''} | {cores * 1000 / n:.2f} | {cores:.3f} | {rss:.0f} | "
            f"{r['threads_loaded']} | {delivered:.1f} | {r['p50_ms']}/{r['p99_ms']}/{r['p999_ms']} | "
            f"{float(r['server_cores']):.2f} | {float(r['phones_cores']):.2f} | "
            f"{float(r['client_cores']):.2f} | {heard:.0f} | {float(r['join_s']):.1f} | {top} |")


HEADER = ("| shape | N | bridge ms CPU per room-second | bridge cores | KiB per room | threads | "
          "delivered % | delay p50/p99/p99.9 ms | server cores | phones cores | loadgen cores | "
          "RTP/s each phone heard | join s | busiest bridge threads (cores) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("loadgen")
    p.add_argument("--shapes", default="S1,S2,S3,S4,S5,S6")
    p.add_argument("--rooms", default="10,25,50,100")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--env", action="append", default=[])
    a = p.parse_args()
    bridge_env = dict(e.split("=", 1) for e in a.env)
    netns_setup()
    tmp = tempfile.mkdtemp(prefix="density-")
    server = LiveKitServer(tmp)
    await server.start()
    rows = []
    try:
        for shape in a.shapes.split(","):
            for n in map(int, a.rooms.split(",")):
                r = await point(a.loadgen, shape, n, a.seconds, tmp, server, bridge_env)
                rows.append(row(shape, n, r))
                print(rows[-1], flush=True)
                for k, v in r.items():
                    result(f"density_{shape}_{n}_{k}", v)
    finally:
        await server.stop()
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
