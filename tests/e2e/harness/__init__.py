"""The end-to-end harness: what every scenario runs on. TEST-ONLY CODE.

- `network`: the run's network namespace and veth pairs, outages;
- `livekit_server`: LiveKit's own server (the pinned build in vendor/), its tokens and its API;
- `mock_sfu`: the mock SFU, for the few faults LiveKit's server cannot make on demand;
- `bridge`: the release bridge, its room workers, their costs and metrics;
- `phones`: the user's phone, LiveKit's Python SDK or the Go phones;
- `backend`: the backend's gRPC calls, as stock grpcio makes them;
- `node_backend`: many users' backends on the backend's own client, grpc-js;
- `audio`: signals to send and the analysis of what was heard;
- `report`: `RESULT key=value` lines and checks;
- `runner`: the one way a run goes (tests/e2e/run.py calls it).

Scenarios are in tests/e2e/scenarios/, a few per file, each file a `SCENARIOS` table."""

import os

# tests/e2e, and the repository's root.
E2E = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(E2E))
