// Drives the bridge the way the backend does: @grpc/grpc-js with @grpc/proto-loader and the
// backend's loader options, loading proto/ from this repository. Usage:
//   node stock_client.mjs <grpc target, e.g. unix:///tmp/bridge.sock or 127.0.0.1:9090>
// BRIDGE_AUTH_TOKEN: send this bearer token; BRIDGE_CA_FILE: connect with TLS, trusting it.
// Exits 0 when every check passed; prints what failed otherwise.
import assert from "node:assert/strict";
import fs from "node:fs";
import { grpc, LiveKitBridge } from "./bridge_proto.mjs";
const target = process.argv[2];
// With BRIDGE_CA_FILE, TLS to a bridge whose certificate that CA signed.
const ca = process.env.BRIDGE_CA_FILE;
const credentials = ca
  ? grpc.credentials.createSsl(fs.readFileSync(ca))
  : grpc.credentials.createInsecure();
const client = new LiveKitBridge(target, credentials);

// With BRIDGE_AUTH_TOKEN in the environment, every call carries it, as the backend would.
const token = process.env.BRIDGE_AUTH_TOKEN;
const metadata = () => {
  const m = new grpc.Metadata();
  if (token) m.set("authorization", `Bearer ${token}`);
  return m;
};
const unary = (method, request, md = metadata()) =>
  new Promise((resolve, reject) =>
    client[method](request, md, (err, response) => (err ? reject(err) : resolve(response))),
  );

// Opens StreamAudio and sends the backend's first chunk; collects what comes back.
function openStream(userId) {
  const call = client.StreamAudio(metadata());
  const state = { chunks: [], bytes: Buffer.alloc(0), ended: false, error: null, status: null };
  call.on("data", (chunk) => {
    state.chunks.push(chunk);
    state.bytes = Buffer.concat([state.bytes, chunk.pcm_data]);
  });
  call.on("end", () => (state.ended = true));
  call.on("error", (e) => (state.error = e));
  call.on("status", (s) => (state.status = s));
  call.write({
    user_id: userId,
    pcm_data: Buffer.alloc(0),
    sample_rate: 16000,
    channels: 1,
    timestamp_ms: String(Date.now()),
  });
  return { call, state };
}

async function until(what, cond, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const checks = [];
const check = (name) => checks.push(name);

if (token) {
  const wrong = new grpc.Metadata();
  wrong.set("authorization", "Bearer wrong");
  for (const md of [new grpc.Metadata(), wrong]) {
    const refused = await unary("HealthCheck", { service: "" }, md).catch((e) => e);
    assert.equal(refused.code, grpc.status.UNAUTHENTICATED, String(refused));
    assert.match(refused.details, /BRIDGE_AUTH_TOKEN/);
  }
  check("UNAUTHENTICATED without the token or with a wrong one");
}

const health = await unary("HealthCheck", { service: "" });
assert.equal(health.status, "SERVING");
assert.equal(typeof health.uptime_seconds, "string", "longs arrive as strings");
check("HealthCheck SERVING");

const user = "stock-client-user";
const joined = await unary("JoinRoom", {
  user_id: user,
  room_name: user,
  token: "token",
  livekit_url: "sim://echo",
  target_identity: user,
});
assert.equal(joined.success, true, joined.error);
assert.equal(joined.participant_count, 2);
assert.ok(joined.participant_id.length > 0);
assert.equal(typeof joined.metadata, "object");
check("JoinRoom success");

const echo = openStream(user);
const sent = Buffer.alloc(3200);
for (let i = 0; i < sent.length; i++) sent[i] = (i * 13) % 251;
echo.call.write({ user_id: user, pcm_data: sent, sample_rate: 16000, channels: 1, track_id: 0 });
await until("the echoed audio", () => echo.state.bytes.length >= sent.length);
assert.deepEqual(echo.state.bytes.subarray(0, sent.length), sent);
for (const c of echo.state.chunks) {
  assert.equal(c.sample_rate, 16000);
  assert.equal(c.channels, 1);
  assert.equal(typeof c.timestamp_ms, "string");
  assert.ok(Math.abs(Number(c.timestamp_ms) - Date.now()) < 10000);
}
check("StreamAudio round trip byte-exact");

const status = await unary("GetStatus", { user_id: user });
assert.equal(status.connected, true);
assert.equal(status.participant_id, joined.participant_id);
assert.equal(status.last_disconnect_at, "0");
assert.ok(status.server_version.length > 0);
const ghost = await unary("GetStatus", { user_id: "nobody" });
assert.equal(ghost.connected, false);
check("GetStatus");

const left = await unary("LeaveRoom", { user_id: user, reason: "test done" });
assert.equal(left.success, true);
await until("the stream to end", () => echo.state.ended || echo.state.error);
assert.equal(echo.state.error, null, "a left session's stream ends cleanly, without error");
await until("the stream status", () => echo.state.status);
assert.equal(echo.state.status.code, grpc.status.OK);
assert.deepEqual(echo.state.status.metadata.get("x-bridge-end-reason"), ["left"]);
const again = await unary("LeaveRoom", { user_id: user, reason: "" });
assert.deepEqual([again.success, again.error], [false, "session not found"]);
check("LeaveRoom ends the stream cleanly");

await unary("JoinRoom", {
  user_id: user,
  room_name: user,
  token: "token",
  livekit_url: "sim://tone?hz=440",
  target_identity: user,
});
const tone = openStream(user);
await until("10 tone frames", () => tone.state.chunks.length >= 10);
assert.ok(tone.state.chunks.every((c) => c.pcm_data.length === 320));
check("tone frames of 320 bytes");
tone.call.cancel();
let afterCancel = true;
for (let i = 0; i < 200 && afterCancel; i++) {
  afterCancel = (await unary("GetStatus", { user_id: user })).connected;
  await new Promise((r) => setTimeout(r, 10));
}
assert.equal(afterCancel, false, "cancelling the stream closes its session");
check("cancel closes the session");

// The endings the backend's reconnect logic acts on, as grpc-js reports them: an error status
// (it rejoins) for a lost room, OK (it leaves the user alone) for an operator's removal and for
// another bridge taking the identity; the end reason travels in the trailers either way.
for (const [reason, code, endReason] of [
  ["lost", grpc.status.UNAVAILABLE, "room_lost"],
  ["removed", grpc.status.OK, "removed"],
  ["duplicate_identity", grpc.status.OK, "replaced_elsewhere"],
]) {
  const u = `ending-${reason}`;
  const r = await unary("JoinRoom", {
    user_id: u,
    room_name: u,
    token: "token",
    livekit_url: `sim://tone?drop_after_ms=300&drop_reason=${reason}`,
    target_identity: u,
  });
  assert.equal(r.success, true, r.error);
  const s = openStream(u);
  await until(`the ${reason} stream to end`, () => s.state.status);
  assert.equal(s.state.status.code, code, `${reason}: ${s.state.status.details}`);
  assert.deepEqual(s.state.status.metadata.get("x-bridge-end-reason"), [endReason]);
  if (code !== grpc.status.OK) {
    assert.equal(s.state.error.code, code, "grpc-js raises the error status");
    assert.deepEqual(s.state.error.metadata.get("x-bridge-end-reason"), [endReason]);
  }
  check(`${reason}: ${code === grpc.status.OK ? "OK" : "UNAVAILABLE"} ${endReason}`);
}

const missing = await unary("JoinRoom", { user_id: "", livekit_url: "sim://tone" }).catch((e) => e);
assert.equal(missing.code, grpc.status.INVALID_ARGUMENT);
check("INVALID_ARGUMENT for an empty user_id");

client.close();
console.log(JSON.stringify({ ok: true, checks }));
