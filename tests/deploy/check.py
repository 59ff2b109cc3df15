"""Checks deploy/kubernetes/*.yaml: each document is valid against Kubernetes' own schema
(kubernetes-validate, strict: an unknown or misspelt field fails), and the bridge's container
is consistent with the bridge and its image:

- every environment variable it sets is a setting the binary knows (from its --help, and
  `ctl --help` for BRIDGE_CTL_ADDR), and every value is one the binary accepts (it is started
  with them and must not exit 64);
- it runs as the image's user (10001);
- its probes are /livez and /readyz on the port BRIDGE_HTTP_ADDR listens on, and gRPC's
  containerPort is PORT;
- terminationGracePeriodSeconds covers preStop, the drain (BRIDGE_SHUTDOWN_TIMEOUT_MS) and 5 s
  of margin;
- a Unix socket lies in a mounted volume that another container of the pod mounts too.

Usage: check.py BINARY FILE...   Prints one line per finding; exits 1 if there is any."""

import os
import re
import subprocess
import sys
import time

import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"
UID = 10001
MARGIN_S = 5


def settings_known(binary):
    text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    text += subprocess.run([binary, "ctl", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\b(?:BRIDGE|LIVEKIT|PLAYBACK|PORT|LOG|RUST)[A-Z_]*\b", text))


def accepted(binary, env):
    """None if the bridge starts with these settings, else what it said as it exited."""
    env = {k: v for k, v in env.items() if k not in ("BRIDGE_CTL_ADDR",)}
    env = dict(env, PORT="0", BRIDGE_HTTP_ADDR="127.0.0.1:0")
    if "LIVEKIT_GRPC_SOCKET" in env:
        env["LIVEKIT_GRPC_SOCKET"] = f"/tmp/livekit-bridge-deploy-check-{os.getpid()}.sock"
    p = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    if p.poll() is None:
        p.terminate()
        p.wait(10)
        return None
    return p.stderr.read().strip()


def check_pod(path, name, pod, binary, known):
    found = []
    say = lambda msg: found.append(f"{path}: {name}: {msg}")
    init = pod.get("initContainers", [])
    containers = init + pod.get("containers", [])
    bridges = [c for c in containers if c["name"] == "bridge"]
    if len(bridges) != 1:
        say("no container named bridge")
        return found
    c = bridges[0]
    # A value from a Secret stands in as a valid token-like string.
    env = {e["name"]: e.get("value", "from-a-secret") for e in c.get("env", [])}
    for key in env:
        if key not in known:
            say(f"{key} is not a setting of the bridge")
    why = accepted(binary, env)
    if why:
        say(f"the bridge refuses these settings: {why}")

    sec = dict(pod.get("securityContext", {}), **c.get("securityContext", {}))
    if sec.get("runAsUser") != UID:
        say(f"runs as {sec.get('runAsUser')}, not the image's user {UID}")

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    http_port = int(env.get("BRIDGE_HTTP_ADDR", ":0").rsplit(":", 1)[1])
    for probe, want in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != want:
            say(f"{probe} is not {want}")
        port = ports.get(get.get("port"), get.get("port"))
        if port != http_port:
            say(f"{probe} probes port {port}, but BRIDGE_HTTP_ADDR listens on {http_port}")
    if "LIVEKIT_GRPC_SOCKET" not in env and ports.get("grpc") != int(env.get("PORT", "9090")):
        say(f"the grpc containerPort {ports.get('grpc')} is not PORT {env.get('PORT', '9090')}")

    drain_s = int(env.get("BRIDGE_SHUTDOWN_TIMEOUT_MS", "5000")) / 1000
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = 0
    if pre.get("exec", {}).get("command", [None])[0] == "sleep":
        pre_s = int(pre["exec"]["command"][1])
    pre_s += pre.get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < pre_s + drain_s + MARGIN_S:
        say(f"terminationGracePeriodSeconds {grace} < preStop {pre_s} + drain {drain_s:g} + {MARGIN_S}")

    sock = env.get("LIVEKIT_GRPC_SOCKET")
    if sock:
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vol = mounts.get(os.path.dirname(sock))
        if vol is None:
            say(f"the socket {sock} is not in a mounted volume")
        elif not any(m["name"] == vol for o in containers if o is not c for m in o.get("volumeMounts", [])):
            say(f"no other container mounts {vol}, where the socket is")
        ctl = env.get("BRIDGE_CTL_ADDR")
        if ctl != f"unix:{sock}":
            say(f"BRIDGE_CTL_ADDR {ctl} is not the socket, so the image's health check misses it")
        if c not in init or c.get("restartPolicy") != "Always":
            say("a sidecar bridge should be a native sidecar (initContainers, restartPolicy: Always)")
    return found


def main():
    binary, paths = sys.argv[1], sys.argv[2:]
    known = settings_known(binary)
    found = []
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                found.append(f"{path}: {doc.get('kind')}: {e.message} at {'.'.join(map(str, e.path))}")
            except Exception as e:  # noqa: BLE001 - any validator error is a finding
                found.append(f"{path}: {doc.get('kind')}: {e}")
            if doc.get("kind") == "Deployment":
                found += check_pod(path, doc["metadata"]["name"], doc["spec"]["template"]["spec"], binary, known)
        print(f"checked {path}: {len(docs)} documents")
    for f in found:
        print("FINDING:", f)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
