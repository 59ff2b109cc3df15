"""Runs end-to-end scenarios: the release bridge binary, with LiveKit's library inside it (in its
room workers), driven by stock grpcio over its Unix socket as the backend would, against
LiveKit's own server with real phones (or, for the few faults that server cannot make on
demand, the mock SFU). TEST-ONLY CODE.

    unshare -n vendor/e2e-venv/bin/python tests/e2e/run.py <bridge binary> <scenario>...

Inside the private network namespace `unshare -n` made, the run brings up loopback and a veth
pair (10.99.0.1/24, 10.99.0.2/24): libwebrtc gathers no loopback candidates, and no test may use
the machine's real interface. Prints `RESULT key=value` lines with what it measured, which
tests/e2e.rs parses and bounds; exits non-zero, with the reason, if a check fails here.

The harness is the package `harness/`; the scenarios, a few per file, are in `scenarios/`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.runner import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
