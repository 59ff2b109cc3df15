"""The end-to-end scenarios, a few per file by what they are about. Each file has a `SCENARIOS`
table (name: coroutine function of the run's backend, `harness.backend.Ctx`) and, if its
scenarios need another server than LiveKit's own, a `SERVER` (how to start it, the backend's
class for it). tests/e2e/run.py runs them by name."""
