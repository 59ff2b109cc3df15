"""The tests' network: the private namespace `unshare -n` made for the run, with loopback and a
veth pair (libwebrtc gathers no loopback candidates, and no test may use the machine's real
interface), and namespaces of a process's own behind a veth pair of their own, whose link a
scenario takes down for an outage."""

import asyncio
import os
import subprocess
import time

from harness.report import check

# This namespace's end of its veth pair, where the servers listen (LiveKit's, the mock's, the
# tests' HTTP files); the other end is 10.99.0.2.
HOST = "10.99.0.1"


def netns_setup():
    cmds = [
        "ip link set lo up",
        "ip link add veth0 type veth peer name veth1",
        f"ip addr add {HOST}/24 dev veth0",
        "ip addr add 10.99.0.2/24 dev veth1",
        "ip link set veth0 up",
        "ip link set veth1 up",
    ]
    for c in cmds:
        subprocess.run(c.split(), check=True)
    # Everything this namespace can reach: loopback and the veth pair, nothing else.
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True)
    check("default" not in routes.stdout, f"unexpected default route: {routes.stdout}")


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


async def link_down(network, seconds):
    """Takes an OwnNetwork's link down for `seconds`: when it went down and came back."""
    network.set(False)
    t_down = time.monotonic()
    await asyncio.sleep(seconds)
    network.set(True)
    return t_down, time.monotonic()
