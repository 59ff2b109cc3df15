// Many users' backends at once, behaving as the backend does (../../docs/backend.md, "how the
// backend uses it"): @grpc/grpc-js with the backend's loader options, one client per user,
// JoinRoom then StreamAudio, and after a stream's error status a new JoinRoom and StreamAudio
// 2 s later; never after a clean end. For the end-to-end scenarios that watch what users live
// through (tests/e2e/harness/node_backend.py drives it). TEST-ONLY CODE. Usage:
//   node backend_users.mjs <grpc target> <users.json>
// users.json: [{user_id, room_name, token, livekit_url, target_identity}, ...]
//
// Each user streams 100 ms of client PCM (silence) every 100 ms on a clock that does not drift,
// and reads the room's audio; the phones put a packet count in each packet's first sample
// (tests/phones -count), so the frames lost are counted.
//
// Prints as they happen (times in seconds of CLOCK_MONOTONIC, Python's time.monotonic()):
//   JOINED <user> <t>                 JoinRoom succeeded; its stream is open
//   AUDIO <user> <t>                  a stream's first chunk of room audio
//   END <user> <t> <code> <reason or -> <details, JSON>
//   REJOIN <user> <t>                 the rejoin after an error status starts
//   REFUSED <user> <t> <error, JSON>  JoinRoom said success: false (tried again in 2 s)
// Answers on stdin, each answer ended by a line "OK":
//   window <t0> <t1> [<a> <b>]
//                     "WINDOW <user> <frames lost> <longest gap, ms> <longest gap that
//                     overlaps [a, b], ms>" for each user with two or more chunks that arrived
//                     in [t0, t1], then "LAG <ms>": the longest this process's event loop was
//                     held up in [t0, t1] (a gap it made itself)
//   leave             LeaveRoom for every user, its stream half-closed first; "OK" once every
//                     stream has ended
import fs from "node:fs";
import readline from "node:readline";
import { grpc, LiveKitBridge } from "./bridge_proto.mjs";

const [target, usersFile] = process.argv.slice(2);
const users = JSON.parse(fs.readFileSync(usersFile, "utf8"));

const REJOIN_AFTER_MS = 2000; // the backend's wait after a stream's error
const CHUNK_MS = 100;
const SILENCE = Buffer.alloc((16000 * 2 * CHUNK_MS) / 1000);
const now = () => Number(process.hrtime.bigint()) / 1e9;
const say = (line) => process.stdout.write(`${line}\n`);

class User {
  constructor(request) {
    this.request = request;
    this.id = request.user_id;
    this.client = new LiveKitBridge(target, grpc.credentials.createInsecure());
    this.frames = []; // [arrival, count]
    this.call = null;
    this.leaving = false;
  }

  join() {
    this.client.JoinRoom(this.request, (err, r) => {
      if (err || !r.success) {
        say(`REFUSED ${this.id} ${now()} ${JSON.stringify(err ? String(err) : r.error)}`);
        setTimeout(() => this.leaving || this.join(), REJOIN_AFTER_MS);
        return;
      }
      this.open();
      say(`JOINED ${this.id} ${now()}`);
    });
  }

  open() {
    const call = this.client.StreamAudio();
    this.call = call;
    let first = true;
    call.on("data", (chunk) => {
      const t = now();
      if (first) say(`AUDIO ${this.id} ${t}`);
      first = false;
      if (chunk.pcm_data.length >= 2) this.frames.push([t, chunk.pcm_data.readUInt16LE(0)]);
    });
    call.on("error", () => {}); // the status says it all
    call.on("status", (s) => {
      this.call = null;
      clearTimeout(this.uplink);
      const reason = s.metadata.get("x-bridge-end-reason")[0] ?? "-";
      say(`END ${this.id} ${now()} ${grpc.status[s.code]} ${reason} ${JSON.stringify(s.details)}`);
      if (s.code !== grpc.status.OK && !this.leaving) {
        setTimeout(() => {
          if (this.leaving) return;
          say(`REJOIN ${this.id} ${now()}`);
          this.join();
        }, REJOIN_AFTER_MS);
      }
      if (this.ended) this.ended();
    });
    call.write({
      user_id: this.id,
      pcm_data: Buffer.alloc(0),
      sample_rate: 16000,
      channels: 1,
      timestamp_ms: String(Date.now()),
    });
    const start = Date.now();
    let sent = 0;
    const send = () => {
      if (this.call !== call || this.leaving) return;
      call.write({ user_id: this.id, pcm_data: SILENCE, sample_rate: 16000, channels: 1 });
      sent += 1;
      this.uplink = setTimeout(send, Math.max(0, start + (sent + 1) * CHUNK_MS - Date.now()));
    };
    this.uplink = setTimeout(send, CHUNK_MS);
  }

  // Frames lost (by the phone's count), the longest gap (ms) among chunks in [t0, t1], and
  // the longest of those gaps that overlaps [a, b].
  window(t0, t1, a, b) {
    const got = this.frames.filter(([t]) => t >= t0 && t <= t1);
    if (got.length < 2) return null;
    let lost = 0;
    let gap = 0;
    let during = 0;
    for (let i = 1; i < got.length; i++) {
      const [from, to] = [got[i - 1][0], got[i][0]];
      lost += (got[i][1] - got[i - 1][1] - 1 + 32768) % 32768;
      gap = Math.max(gap, to - from);
      if (from <= b && to >= a) during = Math.max(during, to - from);
    }
    return [lost, Math.round(gap * 1000), Math.round(during * 1000)];
  }

  leave() {
    this.leaving = true;
    return new Promise((resolve) => {
      const call = this.call;
      if (call === null) return resolve();
      this.ended = resolve;
      clearTimeout(this.uplink);
      this.uplink = null;
      call.end();
      this.client.LeaveRoom({ user_id: this.id, reason: "done" }, () => {});
    });
  }
}

// The event loop's own stalls: a 10 ms tick that comes late was held up by this process (or
// by its cores), and so were the chunks due meanwhile.
const TICK_MS = 10;
const lags = []; // [time the late tick ran, how late, s]
let last = now();
setInterval(() => {
  const t = now();
  const late = t - last - TICK_MS / 1000;
  if (late > 0.02) lags.push([t, late]);
  last = t;
}, TICK_MS);
const lagIn = (t0, t1) =>
  lags.filter(([t, late]) => t >= t0 && t - late <= t1).reduce((m, [, late]) => Math.max(m, late), 0);

const all = users.map((u) => new User(u));
for (const u of all) u.join();

for await (const line of readline.createInterface({ input: process.stdin })) {
  const [command, ...args] = line.trim().split(/\s+/);
  if (command === "window") {
    const [t0, t1, a = t0, b = t1] = args.map(Number);
    for (const u of all) {
      const w = u.window(t0, t1, a, b);
      if (w) say(`WINDOW ${u.id} ${w[0]} ${w[1]} ${w[2]}`);
    }
    say(`LAG ${Math.round(lagIn(t0, t1) * 1000)}`);
  } else if (command === "leave") {
    await Promise.all(all.map((u) => u.leave()));
    for (const u of all) u.client.close();
  }
  if (command === "leave") {
    // stdin would keep the process alive; nothing is left to do.
    process.stdout.write("OK\n", () => process.exit(0));
    break;
  }
  say("OK");
}
