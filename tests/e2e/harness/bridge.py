"""The bridge under test: the release binary serving on a Unix socket, its room worker processes,
and what they cost (RSS, threads by name, CPU) and report (its metrics)."""

import asyncio
import datetime
import os
import subprocess
import sys

from harness import ROOT
from harness.network import OwnNetwork


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
            # Its metrics on its namespace's loopback: the main bridge's in this one (one bridge
            # can have the port), or a bridge's in its own (read through `metric`).
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
        """(RSS KiB, threads) of the bridge: its front process and its room workers (a worker
        that exits meanwhile counts nothing)."""
        rss = threads = 0
        for pid in bridge_pids(self.proc.pid):
            r, t = process_status(pid)
            rss, threads = rss + r, threads + t
        return rss, threads

    def logged_at(self, text):
        """When the bridge first logged a line containing `text` (time.time()'s clock), or
        None."""
        with open(self.log.name) as f:
            for line in f:
                if text in line:
                    stamp = line.split(" ", 1)[0]
                    return datetime.datetime.fromisoformat(stamp).timestamp()
        return None

    def metric(self, name):
        """A metric's value from this bridge's /metrics (0 when absent); it must have been
        started with `metrics`."""
        return metric(name, self.proc.pid if self.network else None)

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
    """(RSS KiB, threads) of process `pid`; (0, 0) once it is gone."""
    rss = threads = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
    except OSError:
        return 0, 0
    return rss, threads


def alive_pid(pid):
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid):
    """User + system CPU seconds of bridge `pid` and its room workers, from /proc (a worker
    that exits meanwhile counts nothing)."""
    total = 0.0
    for p in bridge_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stolen_seconds():
    """The CPU time the hypervisor has taken from this machine's vCPUs, per vCPU (/proc/stat's
    steal): a stall of the whole machine shows as its growth."""
    with open("/proc/stat") as f:
        cpu = f.readline().split()
    return int(cpu[8]) / os.sysconf("SC_CLK_TCK") / os.cpu_count()


def thread_names(pid):
    """The threads of bridge `pid` and its room workers, counted by name."""
    names = {}
    for p in bridge_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue  # a worker that exited since it was listed
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


METRICS_PORT = 19091


def metric(name, netns_of=None):
    """A metric's value from the main bridge's /metrics (0 when absent); with `netns_of` (a
    pid), from the bridge on the loopback of that process's network namespace."""
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    if netns_of is None:
        import urllib.request
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    else:
        fetch = ("import sys, urllib.request; "
                 f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())")
        text = subprocess.run(["nsenter", "-t", str(netns_of), "-n", sys.executable, "-c", fetch],
                              check=True, capture_output=True, text=True, timeout=10).stdout
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
