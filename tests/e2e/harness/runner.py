"""The one way a run goes: this namespace's network, the gRPC stubs, a server, the release
bridge, then the named scenarios in turn; on a failure, or a panic in the bridge's log, the
tails of the bridge's and the server's logs."""

import asyncio
import importlib
import os
import pkgutil
import resource
import tempfile
import time

import scenarios
from harness.backend import RealCtx, load_stubs
from harness.bridge import Bridge
from harness.livekit_server import LiveKitServer
from harness.network import netns_setup
from harness.report import check, result


async def start_livekit(tmp):
    server = LiveKitServer(tmp)
    await server.start()
    return server


# A scenario file that names no SERVER runs against LiveKit's own server.
LIVEKIT = (start_livekit, RealCtx)


def catalogue():
    """Every scenario by name: (its coroutine function, its file's SERVER)."""
    found = {}
    for info in pkgutil.iter_modules(scenarios.__path__):
        module = importlib.import_module(f"scenarios.{info.name}")
        server = getattr(module, "SERVER", LIVEKIT)
        for name, scenario in module.SCENARIOS.items():
            check(name not in found, f"two scenarios are called {name}")
            found[name] = (scenario, server)
    return found


async def run_scenarios(binary, names):
    """Runs scenarios `names` (all of one server) against the bridge `binary`, each with a
    600 s limit, its duration reported."""
    every = catalogue()
    unknown = [n for n in names if n not in every]
    check(names and not unknown, f"unknown scenarios {unknown}; there are {sorted(every)}")
    servers = {every[n][1] for n in names}
    check(len(servers) == 1, f"{names} need different servers: run them apart")
    start_server, make_ctx = servers.pop()
    netns_setup()
    with tempfile.TemporaryDirectory() as tmp:
        pb, pbg = load_stubs(tmp)
        server = await start_server(tmp)
        bridge = Bridge(binary, tmp, metrics=True)
        failed = ctx = None
        try:
            await bridge.wait_ready()
            ctx = make_ctx(pb, pbg, bridge, server)
            for name in names:
                started = time.monotonic()
                await asyncio.wait_for(every[name][0](ctx), 600)
                result(f"{name}_seconds", f"{time.monotonic() - started:.1f}")
            check(bridge.proc.poll() is None, "the bridge exited")
            await ctx.channel.close()
        except BaseException as e:  # report, then show the logs
            failed = e
        finally:
            code = bridge.stop()
            # A scenario may have replaced the server (a restart): stop the one running.
            server = ctx.sfu if ctx is not None else server
            await server.stop()
            with open(os.path.join(tmp, "bridge.log")) as f:
                log = f.read()
            server_log = server.tail()
            # The bridges scenarios start of their own (a network of their own, settings).
            own_logs = {name: open(os.path.join(tmp, name)).read()[-3000:]
                        for name in sorted(os.listdir(tmp))
                        if name.startswith("own") and name.endswith(".log")}
        if os.environ.get("E2E_SHOW_LOG"):
            print("---- bridge log ----\n" + log, flush=True)
        if failed is not None or "panicked" in log:
            print("---- bridge log (tail) ----\n" + log[-6000:], flush=True)
            print("---- server log (tail) ----\n" + server_log, flush=True)
            for name, text in own_logs.items():
                print(f"---- {name} (tail) ----\n" + text, flush=True)
            raise failed or AssertionError("the bridge panicked")
        check(code == 0, f"the bridge exited with {code} on SIGTERM")


def main(argv):
    """`run.py <bridge binary> <scenario>...`"""
    check(len(argv) >= 2, "usage: run.py <bridge binary> <scenario>...")
    # Rooms, phones and gRPC calls of many users in one process.
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    asyncio.run(run_scenarios(argv[0], argv[1:]))
