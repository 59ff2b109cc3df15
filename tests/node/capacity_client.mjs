// The backend's own client (@grpc/grpc-js, the backend's loader options) meets a bridge at
// capacity: JoinRoom answers success: false with an error that says it is a capacity refusal,
// so the backend can use another bridge. Usage: node capacity_client.mjs <host:port>
import assert from "node:assert/strict";
import { grpc, LiveKitBridge } from "./bridge_proto.mjs";

const client = new LiveKitBridge(process.argv[2], grpc.credentials.createInsecure());
const joined = await new Promise((resolve, reject) =>
  client.JoinRoom(
    { user_id: "one-too-many", room_name: "r", token: "t", livekit_url: "sim://silent", target_identity: "x" },
    (err, response) => (err ? reject(err) : resolve(response)),
  ),
);
assert.equal(joined.success, false);
assert.match(joined.error, /^bridge at capacity: /);
client.close();
console.log(JSON.stringify({ ok: true, error: joined.error }));
