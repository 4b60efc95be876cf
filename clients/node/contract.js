"use strict";
// A tetriszmq client written from docs/PROTOCOL.md and docs/VIEWER.md alone, in another language
// than the trainer: the contract suite (tests/test_contract.py runs it against a real trainer and
// viewer) and an example for anyone writing a client.
//
// Usage: node contract.js --pub tcp://127.0.0.1:5555 --ctl tcp://127.0.0.1:5556 \
//            --viewer http://127.0.0.1:8080 --token TOKEN
// The trainer must be training when it starts; it is stopped at the end. Exit 0 when every check passed.

const assert = require("node:assert/strict");
const { parseArgs } = require("node:util");
const zmq = require("zeromq");
const WebSocket = require("ws");

const { values: opts } = parseArgs({
  options: { pub: { type: "string" }, ctl: { type: "string" }, viewer: { type: "string" }, token: { type: "string" } },
});
const HISTORY = new Set(["status", "episode", "metrics"]); // never dropped for a client that keeps up
const TIMEOUT = 60_000;

// The stream (PROTOCOL.md "Stream messages") ----------------------------------------------------------

class Stream {
  // Every message in arrival order, each checked against the envelope, and the raw payload by seq.
  constructor(endpoint) {
    this.messages = [];
    this.raw = new Map();
    this.problems = [];
    this.sub = new zmq.Subscriber({ linger: 0 });
    this.sub.connect(endpoint);
    this.sub.subscribe(); // everything; `subscribe("board:")` would take board frames only
    this.done = this.read();
  }

  async read() {
    for await (const frames of this.sub) {
      const message = this.check(frames);
      if (message) this.messages.push(message);
    }
  }

  check(frames) {
    if (frames.length !== 2) return void this.problems.push(`${frames.length} frames`);
    const [topicFrame, payload] = frames;
    const m = JSON.parse(payload.toString("utf8"));
    const last = this.messages.at(-1);
    if (topicFrame.toString() !== `${m.topic}:`) this.problems.push(`frame ${topicFrame} carries ${m.topic}`);
    if (m.v !== 1 || typeof m.run !== "string" || !Number.isInteger(m.seq) || typeof m.t !== "number") {
      this.problems.push(`bad envelope ${payload.toString().slice(0, 80)}`);
    }
    if (last && last.run === m.run && m.seq !== last.seq + 1) this.problems.push(`seq ${last.seq} -> ${m.seq}`);
    this.raw.set(m.seq, payload.toString("utf8"));
    return m;
  }

  // The first message from index `from` on that satisfies `predicate`.
  async until(predicate, from = 0, what = "a message") {
    return poll(() => this.messages.slice(from).find(predicate), what);
  }

  close() {
    this.sub.close();
  }
}

async function poll(find, what) {
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const found = find();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// Control (PROTOCOL.md "Control requests"): lazy pirate, a fresh REQ socket per attempt ---------------

async function request(frames) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const req = new zmq.Request({ receiveTimeout: 3000, linger: 0 });
    req.connect(opts.ctl);
    try {
      await req.send(frames);
      const [reply] = await req.receive();
      return JSON.parse(reply.toString("utf8"));
    } catch (err) {
      if (err.code !== "EAGAIN") throw err; // no reply in time: this socket can never send again
    } finally {
      req.close();
    }
  }
  throw new Error(`no reply from ${opts.ctl}`);
}

const ask = (cmd) => request(JSON.stringify({ cmd }));

// A late joiner's snapshot merged with the live stream, exactly as PROTOCOL.md's recipe says.
function merge(snapshot, buffered) {
  const items = [snapshot.status, ...snapshot.episodes, ...snapshot.metrics].filter(Boolean);
  const live = buffered.filter((m) => m.run === snapshot.run && m.seq > snapshot.seq && HISTORY.has(m.topic));
  return [...items.sort((a, b) => a.seq - b.seq), ...live];
}

// The viewer (VIEWER.md "HTTP" and "WebSocket /ws") ---------------------------------------------------

async function http(method, path, { body, authorization } = {}) {
  const headers = authorization == null ? {} : { Authorization: authorization };
  const response = await fetch(opts.viewer + path, { method, body, headers });
  assert.match(response.headers.get("content-type"), /^application\/json/, `${method} ${path}`);
  return { status: response.status, headers: response.headers, json: await response.json() };
}

const control = (cmd, authorization = `Bearer ${opts.token}`) =>
  http("POST", "/api/control", { body: JSON.stringify({ cmd }), authorization });

class Browser {
  // A WebSocket client: on /ws, as a one-run page (snapshots, then trainer and link messages);
  // on /ws?runs=1, as the page (the run list, then what it watches).
  constructor(path = "/ws") {
    this.messages = [];
    this.texts = [];
    this.ws = new WebSocket(opts.viewer.replace(/^http/, "ws") + path);
    this.ws.on("message", (data) => {
      this.texts.push(data.toString("utf8"));
      this.messages.push(JSON.parse(data.toString("utf8")));
    });
  }

  async until(predicate, what) {
    return poll(() => this.messages.find(predicate), what);
  }
}

// The checks ------------------------------------------------------------------------------------------

const results = { passed: 0, failed: 0 };

async function check(name, body) {
  try {
    await body();
    results.passed++;
    console.log(`ok   ${name}`);
  } catch (err) {
    results.failed++;
    console.log(`FAIL ${name}: ${err.message}`);
  }
}

const PYTHON_WORDS = /NoneType|\bNone\b|\bTrue\b|\bFalse\b|\bdict\b|\blist\b|\bint\b|\bstr\b/;
const MALFORMED = [
  ["not json", "request is not valid UTF-8 JSON"],
  ['{"cmd":"status","cmd":"pause"}', 'repeated fields: "cmd"'],
  ["[]", "request must be a JSON object, got array"],
  ["null", "request must be a JSON object, got null"],
  ['{"cmd":null}', '"cmd" must be a string, got null'],
  ['{"cmd":true}', '"cmd" must be a string, got boolean'],
  ['{"cmd":"status","v":"1"}', 'got "1"'],
  ['{"cmd":"status","v":123456789012345678901234567890}', "got 123456789012345678901234567890"],
  ['{"cmd":"launch"}', 'unknown command "launch"'],
  ['{"cmd":"status","force":1}', 'unexpected fields: "force"'],
  [['{"cmd":"status"}', "x"], "expected 1 frame, got 2"],
  [`{"cmd":"${"x".repeat(5000)}"}`, "exceeds 4096"],
];

async function main() {
  const stream = new Stream(opts.pub); // subscribe first, then ask: nothing is missed in between
  const first = await stream.until(() => true, 0, "the first stream message");
  const run = first.run;

  await check("stream: two frames, the envelope, seq +1 per message", async () => {
    await stream.until((m, i) => i >= 100, 0, "100 messages");
    assert.deepEqual(stream.problems, []);
  });

  await check("snapshot: merged with the buffered stream, no gap and no duplicate", async () => {
    const snapshot = await ask("snapshot");
    assert.equal(snapshot.ok, true);
    assert.equal(snapshot.run, run);
    await stream.until((m) => m.seq > snapshot.seq + 20, 0, "messages past the snapshot");
    const merged = merge(snapshot, stream.messages);
    const seqs = merged.map((m) => m.seq);
    assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), "in seq order, each once");
    const episodes = merged.filter((m) => m.topic === "episode").map((m) => m.episode);
    assert.deepEqual(episodes, episodes.map((_, i) => episodes[0] + i), "every episode, in order");
  });

  await check("control: malformed requests get JSON-worded errors and change nothing", async () => {
    for (const [frames, error] of MALFORMED) {
      const reply = await request(frames);
      assert.equal(reply.ok, false, String(frames).slice(0, 60));
      assert.ok(reply.error.includes(error), `${String(frames).slice(0, 60)} -> ${reply.error}`);
      assert.doesNotMatch(reply.error, PYTHON_WORDS);
    }
    assert.notEqual((await ask("status")).state, "paused");
  });

  const browser = new Browser();
  await check("viewer /ws: a snapshot first, then the trainer's payloads byte for byte, in seq order", async () => {
    const snapshot = await browser.until((m) => m.topic === "snapshot", "a snapshot");
    assert.equal(browser.messages[0].topic, "snapshot");
    assert.equal(snapshot.run, run);
    await browser.until((m) => m.topic === "board" && m.seq > snapshot.seq, "a live board");
    let expected = snapshot.seq + 1;
    browser.messages.forEach((m, i) => {
      if (i === 0 || m.topic === "link") return;
      assert.equal(m.seq, expected++, `${m.topic} after seq ${expected - 2}`);
      if (stream.raw.has(m.seq)) assert.equal(browser.texts[i], stream.raw.get(m.seq), "the trainer's bytes");
    });
  });

  await check("viewer HTTP: status, health, and every error as {ok: false, error}", async () => {
    assert.deepEqual((await http("GET", "/healthz")).json, { ok: true });
    const status = (await http("GET", "/api/status")).json;
    assert.equal(status.run, run);
    assert.ok(Number.isInteger(status.trainer.seq) && Number.isInteger(status.clients.sent));
    const errors = [
      [await http("GET", "/no/such/page"), 404],
      [await http("GET", "/api/control"), 405],
      [await http("POST", "/api/control", { body: "x".repeat(2000), authorization: `Bearer ${opts.token}` }), 413],
      [await control("pause", null), 401], // no Authorization header
      [await control("pause", opts.token), 401], // the token without its scheme
      [await control("pause", "Bearer"), 401],
      [await control("pause", `Bearer ${opts.token} ${opts.token}`), 401],
      [await control("pause", "Bearer wrong"), 403],
      [await http("POST", "/api/control", { body: '{"cmd":"status","cmd":"pause"}',
        authorization: `Bearer ${opts.token}` }), 400],
      [await control("status"), 400],
    ];
    for (const [{ status: got, headers, json }, want] of errors) {
      assert.equal(got, want);
      assert.equal(json.ok, false);
      assert.equal(typeof json.error, "string");
      if (want === 401) assert.match(headers.get("www-authenticate"), /^Bearer realm=/);
    }
    assert.notEqual((await ask("status")).state, "paused");
  });

  await check("control over REQ: pause, resume, save, each shown on the stream", async () => {
    for (const [cmd, state, shown] of [["pause", "paused", "paused"], ["resume", "running", "running"],
      ["save", "saving", "saving"]]) {
      const from = stream.messages.length;
      const reply = await ask(cmd);
      assert.deepEqual([reply.ok, reply.state], [true, state], cmd);
      await stream.until((m) => m.topic === "status" && m.state === shown, Math.max(0, from - 50), `${cmd} shown`);
      if (cmd === "pause") await stream.until((m) => m.topic === "heartbeat" && m.state === "paused", from);
    }
    await stream.until((m) => m.topic === "status" && /^saved /.test(m.reason), 0, "a saved status");
  });

  await check("viewer runs mode: the run list, then a watched run's snapshot before its messages, with its id",
    async () => {
      const { json: listing } = await http("GET", "/api/runs");
      const entry = listing.runs.find((r) => r.process === run);
      assert.ok(entry, "the trainer's run is listed");
      const runs = new Browser("/ws?runs=1");
      const first = await runs.until(() => true, "the run list");
      assert.deepEqual([first.topic, first.full], ["runs", true]);
      runs.ws.send(JSON.stringify({ watch: { runs: [entry.id], boards: [] } }));
      const snapshot = await runs.until((m) => m.topic === "snapshot", "the watched run's snapshot");
      assert.deepEqual([snapshot.id, snapshot.run], [entry.id, run]);
      assert.equal(snapshot.history.episodes.columns[0], "episodes");
      const episode = await runs.until((m) => m.topic === "episode" && m.seq > snapshot.seq, "a live episode");
      assert.equal(episode.id, entry.id);
      const mine = runs.messages.filter((m) => m.id === entry.id);
      assert.equal(mine[0].topic, "snapshot", "nothing of a run before its snapshot");
      assert.ok(!mine.some((m) => m.topic === "board"), "no boards it did not ask for");
      runs.ws.close();
    });

  await check("control through the viewer: any case of 'Bearer', the trainer's reply, the run it acted on", async () => {
    const { json: status } = await http("GET", "/api/status");
    const paused = await control("pause", `bearer ${opts.token}`);
    assert.deepEqual([paused.status, paused.json], [200, { ok: true, state: "paused", run: status.trainer.id }]);
    await browser.until((m) => m.topic === "status" && m.state === "paused", "paused on /ws");
    const resumed = await control("resume");
    assert.deepEqual([resumed.status, resumed.json.state], [200, "running"]);
  });

  await check("stop: the stream ends with stopped, on the trainer and on /ws", async () => {
    const reply = await ask("stop");
    assert.deepEqual([reply.ok, reply.state], [true, "stopping"]);
    await stream.until((m) => m.topic === "status" && m.state === "stopped", 0, "stopped");
    await browser.until((m) => m.topic === "status" && m.state === "stopped", "stopped on /ws");
    assert.deepEqual(stream.problems, []);
  });

  browser.ws.close();
  stream.close();
  console.log(`${results.passed} passed, ${results.failed} failed`);
  process.exitCode = results.failed ? 1 : 0;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 2;
});
