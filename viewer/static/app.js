// The viewer page: every run in one place (see docs/VIEWER.md, "WebSocket /ws").
//
// One WebSocket in runs mode: the run list first, then, for the runs this page watches (the
// ones selected for the charts and the focused one), a snapshot each and their live messages;
// board frames only for the boards it draws. State is updated per message; drawing happens on
// requestAnimationFrame.

import { drawBoard, drawCandidates, drawPieces } from "./board.js";
import { Charts, format } from "./charts.js";
import { ReplayPlayer } from "./replay.js";
import { RunList, countOf, escape } from "./runlist.js";
import { Table } from "./tables.js";

const RECONNECT_MAX = 5000;
const STRIP_MAX = 6;
const PALETTE = ["#00c8f0", "#f0a000", "#3ecf8e", "#e879f9", "#f05a5a", "#a3e635", "#818cf8", "#fbbf24",
  "#2dd4bf", "#fb7185", "#c084fc", "#94a3b8"];
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";

class Run {
  constructor(entry, colour) {
    this.id = entry.id;
    this.entry = entry;
    this.colour = colour;
    this.selected = false;
    this.episodes = new Table();
    this.metrics = new Table();
    this.process = null;  // the trainer process the history messages come from
    this.seq = -1;        // last history message taken from it
    this.board = null;
    this.latest = null;   // the newest status or heartbeat
    this.linesSeen = false;
  }

  // A Tetris run (lines per episode mean something), not an SB3 run on some other env.
  hasLines() {
    return this.linesSeen || this.board !== null || "env.kind" in (this.entry.config || {});
  }

  note(m) {
    if (m && (!this.latest || m.seq >= this.latest.seq || m.run !== this.latest.run)) this.latest = m;
  }
}

const view = {
  runs: new Map(),
  focused: null,
  ws: null,
  connection: "connecting",
  sentWatch: "",
  listed: false,
  boardDirty: true,
  colours: 0,
  standIn: null,  // a finished run charted only because no run was live when the page opened
  thinking: false,  // draw the agent's candidates on the focused board
};

const replay = new ReplayPlayer({
  panel: $("replay"), best: $("replay-best"), list: $("replay-list"), game: $("replay-game"),
  board: $("replay-board"), next: $("replay-next"), speed: $("replay-speed"), play: $("replay-play"),
  step: $("replay-step"), back: $("replay-back"), scrub: $("replay-scrub"), info: $("replay-info"),
});
const charts = new Charts($("main-charts"), $("groups"), () => [...view.runs.values()].filter((r) => r.selected));
const list = new RunList($("run-table"), $("filter"), $("runs-count"), {
  onSelect(id, on) {
    const run = view.runs.get(id);
    if (!run) return;
    run.selected = on;
    view.standIn = null;  // the user chose: keep what they chose
    charts.touchAll(true);
    changed();
  },
  onFocus(id) { focus(id); },
});

// Messages --------------------------------------------------------------------

const handlers = {
  runs(m) {
    once("run list");
    if (m.full) for (const id of [...view.runs.keys()]) if (!m.runs.some((e) => e.id === id)) view.runs.delete(id);
    for (const entry of m.runs) {
      const run = view.runs.get(entry.id);
      if (!run) {
        add(entry);
        continue;
      }
      const started = view.listed && !run.entry.live && entry.live;  // listed before its trainer was known to run
      Object.assign(run.entry, entry);
      if (started) joinLive(run);
    }
    for (const id of m.removed || []) view.runs.delete(id);
    if (!view.listed) firstSelection();
    view.listed = true;
    if (!view.runs.has(view.focused)) view.focused = null;
    if (view.focused === null) {
      const live = [...view.runs.values()].find((r) => r.selected && r.entry.live);
      if (live) view.focused = live.id;
    }
    changed();
  },
  snapshot(m) {
    once("first snapshot");
    const run = view.runs.get(m.id) || add(m.entry);
    Object.assign(run.entry, m.entry);
    run.episodes = new Table(m.history.episodes);
    run.metrics = new Table(m.history.metrics);
    const lines = run.episodes.column("lines");
    run.linesSeen = !!lines && lines.some((v) => v > 0);
    run.process = m.run;
    run.seq = m.seq;
    run.latest = null;
    [m.status, m.heartbeat].filter(Boolean).sort((a, b) => a.seq - b.seq).forEach((p) => run.note(p));
    run.board = m.board;
    if (m.link) run.entry.link = m.link.state;
    charts.touchTable(run, "episodes");
    charts.touchTable(run, "metrics");
    charts.touchAll();  // not urgent: fifty snapshots landing together redraw a chart 4 times a second, not 50
    view.boardDirty = true;
    showFocus();
  },
  status(m, run) {
    if (!take(run, m)) return;
    run.note(m);
    run.entry.state = m.state;
    showFocus();
  },
  episode(m, run) {
    if (!take(run, m)) return;
    run.episodes.push({ episodes: m.episode, timesteps: m.timesteps, t: m.t, lines: m.lines, reward: m.reward,
      length: m.length });
    if (m.lines > 0) run.linesSeen = true;
    charts.touchTable(run, "episodes");
  },
  metrics(m, run) {
    if (!take(run, m)) return;
    run.metrics.push({ episodes: m.episodes, timesteps: m.timesteps, t: m.t, sps: m.sps, ...(m.scalars || {}) });
    charts.touchTable(run, "metrics");
  },
  heartbeat(m, run) {
    run.note(m);
    if (run.id === view.focused) showFocus();
  },
  board(m, run) {
    const first = run.board === null;
    run.board = m;
    run.boardDirty = true;
    if (run.id === view.focused) view.boardDirty = true;
    if (first) showFocus();
  },
  link(m, run) {
    run.entry.link = m.state;
  },
};

// A performance mark the first time only: bench/page.py reads where the first chart's time goes.
function once(name) {
  if (!performance.getEntriesByName(name).length) performance.mark(name);
}

// History messages are taken once each, in seq order, per trainer process; a new process starts over.
function take(run, m) {
  if (m.run === run.process && m.seq <= run.seq) return false;
  run.process = m.run;
  run.seq = m.seq;
  return true;
}

function add(entry) {
  const run = new Run(entry, PALETTE[view.colours++ % PALETTE.length]);
  if (view.listed && entry.live) joinLive(run);  // a run started while the page is open joins the charts
  view.runs.set(entry.id, run);
  return run;
}

// All live runs; with none, the latest run, so that the charts are never empty for no reason.
function firstSelection() {
  const runs = [...view.runs.values()];
  const live = runs.filter((r) => r.entry.live);
  const latest = runs.sort((a, b) => (b.entry.started || 0) - (a.entry.started || 0))[0];
  for (const run of live.length ? live : latest ? [latest] : []) run.selected = true;
  view.standIn = live.length ? null : latest || null;
}

// The first live run takes the place of the finished run shown only because nothing was live.
function joinLive(run) {
  run.selected = true;
  if (view.standIn) view.standIn.selected = false;
  view.standIn = null;
}

function onMessage(event) {
  let m;
  try { m = JSON.parse(event.data); } catch { return; }
  if (m.topic === "runs" || m.topic === "snapshot") handlers[m.topic](m);
  else if (handlers[m.topic] && view.runs.has(m.id)) handlers[m.topic](m, view.runs.get(m.id));
}

// What this page watches: the selected runs and the focused one; the boards it draws.
function sendWatch() {
  const ws = view.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || !view.listed) return;
  const runs = [...view.runs.values()].filter((r) => r.selected || r.id === view.focused).map((r) => r.id).sort();
  const boards = [view.focused, ...stripRuns().map((r) => r.id)].filter(Boolean).sort();
  const text = JSON.stringify({ watch: { runs, boards } });
  if (text !== view.sentWatch) {
    ws.send(text);
    view.sentWatch = text;
  }
}

function changed() {
  replay.follow(view.focused);
  list.update([...view.runs.values()], view.focused);
  showSummary();
  showFocus();
  showStrip();
  sendWatch();
}

// The focused run ----------------------------------------------------------------

function focus(id) {
  view.focused = id;
  view.boardDirty = true;
  changed();
}

function showFocus() {
  const run = view.runs.get(view.focused);
  const e = run ? run.entry : null;
  setText("focus-name", e ? e.name : "no run focused");
  $("focus-swatch").style.background = run ? run.colour : "transparent";
  const state = $("focus-state");
  state.textContent = e ? e.state : "–";
  state.className = "pill " + ({ running: "ok", paused: "warn", saving: "warn", stopped: "", crashed: "bad",
    error: "bad" }[e && e.state] || "");
  const boarded = !!(run && run.board && e.live);
  $("game").hidden = !boarded;
  $("no-board").hidden = boarded;
  setText("no-board", !run ? "Click a run in the list to focus it; a live run's board shows here."
    : !e.live ? `${e.state}: no live board (the charts keep its whole history).`
      : run.board ? "" : run.hasLines() ? "waiting for a board frame…" : "this run streams no board");
  const latest = run && run.latest;
  const counters = { ...(e || {}), ...(latest || {}) };
  setText("s-timesteps", e ? counters.timesteps.toLocaleString() : "–");
  setText("s-episodes", e ? counters.episodes.toLocaleString() : "–");
  const lines = run ? run.hasLines() : true;
  $("s-best-label").hidden = $("s-best").hidden = !lines;
  setText("s-best", e && counters.best_lines !== null && counters.best_lines !== undefined ? String(counters.best_lines)
    : "–");
  setText("s-sps", e ? format(counters.sps) : "–");
  setText("s-run", e ? e.process || "–" : "–");
  const live = !!(e && e.live);
  for (const button of document.querySelectorAll("[data-cmd]")) button.disabled = !token || !live;
}

function stripRuns() {
  return [...view.runs.values()].filter((r) => r.entry.live && r.id !== view.focused).slice(0, STRIP_MAX);
}

function showStrip() {
  const strip = $("strip");
  const runs = stripRuns();
  const ids = runs.map((r) => r.id).join("|");
  if (strip.dataset.ids !== ids) {
    strip.dataset.ids = ids;
    strip.innerHTML = runs.map((r) => `<button class="tile" data-id="${escape(r.id)}" hidden>
      <canvas width="60" height="120"></canvas><span style="color:${r.colour}">${escape(r.entry.name)}</span></button>`)
      .join("");
    for (const run of runs) run.boardDirty = true;
  }
  strip.closest(".strip-panel").hidden = !runs.length;
}

$("strip").addEventListener("click", (event) => {
  const tile = event.target.closest(".tile");
  if (tile) focus(tile.dataset.id);
});

function showSummary() {
  const runs = [...view.runs.values()];
  const live = runs.filter((r) => r.entry.live).length;
  setText("summary", runs.length ? `${countOf(runs.length)}, ${live} live` : "no runs yet");
}

function setText(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

// Connection -------------------------------------------------------------------

function showLink() {
  const el = $("link"), banner = $("banner");
  const open = view.connection === "open";
  el.textContent = open ? "connected" : view.connection;
  el.className = "pill " + (open ? "ok" : "warn");
  banner.hidden = open;
  banner.textContent = open ? "" : "Lost the viewer: reconnecting…";
}

function connect(delay = 250) {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws?runs=1`);
  view.ws = ws;
  ws.onopen = () => { once("connected"); view.connection = "open"; view.sentWatch = ""; delay = 250; showLink(); };
  ws.onmessage = onMessage;
  ws.onclose = () => {
    view.connection = "reconnecting";
    showLink();
    setTimeout(() => connect(Math.min(delay * 2, RECONNECT_MAX)), delay);
  };
}

// Control ------------------------------------------------------------------------

async function control(cmd) {
  const ack = $("ack");
  const run = view.focused;
  ack.className = "ack";
  ack.textContent = `${run}: ${cmd}…`;
  try {
    const response = await fetch("/api/control", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ cmd, run }),
    });
    const reply = await response.json();
    ack.className = reply.ok ? "ack ok" : "ack bad";
    ack.textContent = reply.ok ? `${reply.run}: ${cmd}: trainer says ${reply.state || "ok"}`
      : `${run}: ${cmd} refused: ${reply.error}`;
  } catch (err) {
    ack.className = "ack bad";
    ack.textContent = `${run}: ${cmd} failed: ${err}`;
  }
}

function setUpControls() {
  for (const button of document.querySelectorAll("[data-cmd]")) {
    button.addEventListener("click", () => control(button.dataset.cmd));
  }
  if (token) $("ack").textContent = "Control enabled by the token in this page's URL; it acts on the focused run.";
}

function setUpThinking() {
  const button = $("show-candidates");
  button.addEventListener("click", () => {
    view.thinking = !view.thinking;
    button.setAttribute("aria-pressed", String(view.thinking));
    view.boardDirty = true;
  });
}

function setUpToolbar() {
  $("x-axis").addEventListener("change", (event) => { charts.axis = event.target.value; charts.touchAll(true); });
  $("smoothing").addEventListener("input", (event) => {
    charts.weight = Number(event.target.value);
    setText("smoothing-value", charts.weight.toFixed(2));
    charts.touchAll(true);
  });
}

// Drawing ------------------------------------------------------------------------

function frame() {
  const run = view.runs.get(view.focused);
  if (view.boardDirty && run) {
    view.boardDirty = false;
    const b = run.board;
    drawBoard($("board"), b && b.board);
    if (view.thinking && b && b.candidates) drawCandidates($("board"), b.candidates, b.chosen);
    $("board").shown = b;  // what the canvas shows, for tests
    drawPieces($("next"), (b && b.next) || []);
    drawPieces($("hold"), b && b.hold ? [b.hold] : []);
    setText("ep", b ? String(b.episode ?? "–") : "–");
  }
  for (const tile of $("strip").children) {
    const tiled = view.runs.get(tile.dataset.id);
    if (!tiled || !tiled.boardDirty || !tiled.board) continue;
    tiled.boardDirty = false;
    tile.hidden = false;
    drawBoard(tile.querySelector("canvas"), tiled.board.board);
  }
  charts.frame();
  requestAnimationFrame(frame);
}

window.viewerCharts = charts;  // bench/page.py reads its per-frame costs
window.viewerState = view;  // a failing page test reports what the page held
setUpControls();
setUpThinking();
setUpToolbar();
showLink();
showFocus();
connect();
requestAnimationFrame(frame);
