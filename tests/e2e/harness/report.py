"""What a scenario reports and checks: `RESULT key=value` lines on stdout, which tests/e2e.rs
parses and bounds, and checks that fail the scenario with the reason."""


def result(key, value):
    print(f"RESULT {key}={value}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
