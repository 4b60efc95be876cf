// The viewer page: one WebSocket (snapshot, then live messages; see docs/VIEWER.md),
// state updated per message, canvases redrawn on requestAnimationFrame.

import { drawBoard, drawPieces } from "./board.js";
import { Chart, MovingAverage, Series, drawAll, format } from "./charts.js";

const MA_WINDOW = 100;
const RECONNECT_MAX = 5000;
const $ = (id) => document.getElementById(id);

const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";

const episodeCharts = {
  lines: new Chart($("chart-lines"), `lines per episode (avg ${MA_WINDOW})`,
    [new Series("rgba(0,240,240,0.45)"), new MovingAverage("#00f0f0", MA_WINDOW)]),
  reward: new Chart($("chart-reward"), `reward per episode (avg ${MA_WINDOW})`,
    [new Series("rgba(240,160,0,0.45)"), new MovingAverage("#f0a000", MA_WINDOW)]),
};
const scalarCharts = new Map();  // scalar name -> Chart over timesteps

const view = {
  run: null,
  seq: -1,          // last history message (status, episode, metrics) taken
  board: null,
  boardDirty: true,
  link: "waiting",
  trainer: "",
  connection: "connecting",
  heardAt: 0,
};

// Messages -------------------------------------------------------------------

const handlers = {
  snapshot(m) {
    view.run = m.run;
    view.seq = -1;
    for (const chart of allCharts()) chart.clear();
    handlers.link(m.link);
    // In seq order, as they happened: after a stop the last heartbeat (running) is older than the status.
    const parts = [m.status, m.heartbeat, m.board, ...m.episodes, ...m.metrics].filter(Boolean);
    parts.sort((a, b) => a.seq - b.seq).forEach((part) => handlers[part.topic](part));
    view.seq = m.seq;
    setText("run", m.run || "no run yet");
    setText("s-run", m.run || "–");
  },
  link(m) {
    view.link = m.state;
    view.trainer = m.trainer;
    showLink();
  },
  heartbeat(m) {
    view.heardAt = performance.now();
    showTrainerState(m.state, m.reason);
    showCounters(m);
    if (m.uptime !== undefined) setText("s-uptime", duration(m.uptime));
  },
  board(m) {
    view.board = m;
    view.boardDirty = true;
  },
  status(m) {
    showTrainerState(m.state, m.reason);
    showCounters(m);
  },
  episode(m) {
    episodeCharts.lines.series[0].push(m.episode, m.lines);
    episodeCharts.lines.series[1].add(m.episode, m.lines);
    episodeCharts.reward.series[0].push(m.episode, m.reward);
    episodeCharts.reward.series[1].add(m.episode, m.reward);
    episodeCharts.lines.touch();
    episodeCharts.reward.touch();
  },
  metrics(m) {
    showCounters(m);
    scalar("steps/s", m.timesteps, m.sps);
    for (const [name, value] of Object.entries(m.scalars || {})) scalar(name, m.timesteps, value);
  },
};

// History messages are taken once each, in seq order; a snapshot restarts the count.
function take(m) {
  if (m.seq <= view.seq) return;
  view.seq = m.seq;
  handlers[m.topic](m);
}

function onMessage(event) {
  let m;
  try { m = JSON.parse(event.data); } catch { return; }
  if (m.topic === "snapshot" || m.topic === "link" || m.topic === "board" || m.topic === "heartbeat") {
    handlers[m.topic]?.(m);
  } else if (handlers[m.topic] && (m.run === view.run || view.run === null)) {
    take(m);
  }
}

function scalar(name, x, y) {
  if (!Number.isFinite(y)) return;
  let chart = scalarCharts.get(name);
  if (!chart) {
    const box = document.createElement("div");
    const canvas = document.createElement("canvas");
    canvas.className = "chart";
    canvas.dataset.scalar = name;
    box.appendChild(canvas);
    const holder = $("scalars");
    const after = [...scalarCharts.keys()].sort().find((other) => other > name);
    holder.insertBefore(box, after ? scalarCharts.get(after).canvas.parentElement : null);
    chart = new Chart(canvas, name, [new Series("#a78bfa", 1.5)]);
    scalarCharts.set(name, chart);
  }
  chart.series[0].push(x, y);
  chart.touch();
}

function* allCharts() {
  yield* Object.values(episodeCharts);
  yield* scalarCharts.values();
}

// Status ---------------------------------------------------------------------

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function showTrainerState(state, reason) {
  const el = $("trainer-state");
  el.textContent = state;
  el.className = "pill " + ({ running: "ok", paused: "warn", saving: "warn", stopped: "bad", error: "bad" }[state] || "");
  el.classList.toggle("stale", view.link !== "online" || view.connection !== "open");
  setText("s-state", reason ? `${state} (${reason})` : state);
}

function showCounters(m) {
  if (m.timesteps !== undefined) setText("s-timesteps", m.timesteps.toLocaleString());
  if (m.episodes !== undefined) setText("s-episodes", m.episodes.toLocaleString());
  if (m.best_lines !== undefined) setText("s-best", String(m.best_lines));
  if (m.sps !== undefined) setText("s-sps", format(m.sps));
}

function showLink() {
  const el = $("link"), banner = $("banner");
  let text, cls, warning = "";
  if (view.connection !== "open") {
    text = view.connection; cls = "warn";
    warning = "Lost the viewer: reconnecting…";
  } else if (view.link === "online") {
    text = "live"; cls = "ok";
  } else if (view.link === "offline") {
    text = "trainer offline"; cls = "bad";
    warning = `Trainer offline: no heartbeat from ${view.trainer} for a few seconds. The history below is kept.`;
  } else {
    text = "waiting for trainer"; cls = "warn";
    warning = `Waiting for trainer at ${view.trainer}…`;
  }
  el.textContent = text;
  el.className = "pill " + cls;
  // The last state heard is history, not news, once the trainer or the viewer is gone.
  $("trainer-state").classList.toggle("stale", text !== "live");
  banner.hidden = !warning;
  banner.textContent = warning;
  setText("s-conn", view.connection);
}

function duration(seconds) {
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

// Connection -----------------------------------------------------------------

function connect(delay = 250) {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { view.connection = "open"; delay = 250; showLink(); };
  ws.onmessage = onMessage;
  ws.onclose = () => {
    view.connection = "reconnecting";
    showLink();
    setTimeout(() => connect(Math.min(delay * 2, RECONNECT_MAX)), delay);
  };
}

// Control --------------------------------------------------------------------

async function control(cmd) {
  const ack = $("ack");
  ack.className = "ack";
  ack.textContent = `${cmd}…`;
  try {
    const response = await fetch("/api/control", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ cmd }),
    });
    const reply = await response.json();
    ack.className = reply.ok ? "ack ok" : "ack bad";
    ack.textContent = reply.ok ? `${cmd}: trainer says ${reply.state || "ok"}` : `${cmd} refused: ${reply.error}`;
  } catch (err) {
    ack.className = "ack bad";
    ack.textContent = `${cmd} failed: ${err}`;
  }
}

function setUpControls() {
  for (const button of document.querySelectorAll("[data-cmd]")) {
    button.disabled = !token;
    button.addEventListener("click", () => control(button.dataset.cmd));
  }
  if (token) $("ack").textContent = "Control enabled by the token in this page's URL.";
}

// Drawing --------------------------------------------------------------------

function frame() {
  if (view.boardDirty) {
    view.boardDirty = false;
    const b = view.board;
    drawBoard($("board"), b && b.board);
    drawPieces($("next"), (b && b.next) || []);
    drawPieces($("hold"), b && b.hold ? [b.hold] : []);
    setText("ep", b ? String(b.episode ?? "–") : "–");
    setText("ep-lines", b ? String(b.lines) : "–");
    setText("ep-score", b ? format(b.score) : "–");
    setText("ep-step", b ? String(b.step) : "–");
  }
  drawAll(allCharts());
  requestAnimationFrame(frame);
}

window.addEventListener("resize", () => { for (const chart of allCharts()) chart.touch(); });
setUpControls();
showLink();
connect();
requestAnimationFrame(frame);
