// The run list: one row per run, sortable by any column, filtered by a text box.
//
// Besides the fixed columns it shows the config values where the listed runs differ, so a
// sweep reads as a table. The checkbox selects a run for the charts; clicking a row focuses it.

import { format } from "./charts.js";

const MAX_CONFIG_COLUMNS = 6;
// Config keys that differ between any two runs without saying anything about the experiment.
const NOISE = /^(publish\.(pub|ctl)|run\.(dir|name|seed)|agent\.algo|security\.)/;

const STATE_CLASS = { running: "ok", paused: "warn", saving: "warn", starting: "warn", stopping: "warn",
  stopped: "muted", crashed: "bad", error: "bad", unknown: "muted", waiting: "warn" };

// "1 run", "2 runs".
export function countOf(n) {
  return `${n} run${n === 1 ? "" : "s"}`;
}

function when(seconds) {
  if (!seconds) return "–";
  const d = new Date(seconds * 1000), now = new Date();
  const time = d.toTimeString().slice(0, 5);
  return d.toDateString() === now.toDateString() ? time : `${d.toISOString().slice(0, 10)} ${time}`;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

function elapsed(e) {
  if (!e.started) return null;
  return (e.live ? Date.now() / 1000 : e.ended || e.started) - e.started;
}

// [key, header, value(run), text(run)]; value is what sorting compares.
const FIXED = [
  ["name", "name", (r) => r.entry.name, (r) => r.entry.name],
  ["state", "state", (r) => r.entry.state, (r) => r.entry.state],
  ["algo", "algo", (r) => r.entry.algo, (r) => r.entry.algo ?? "–"],
  ["seed", "seed", (r) => r.entry.seed, (r) => r.entry.seed ?? "–"],
];
const COUNTERS = [
  ["episodes", "episodes", (r) => r.entry.episodes, (r) => r.entry.episodes.toLocaleString()],
  ["timesteps", "timesteps", (r) => r.entry.timesteps, (r) => r.entry.timesteps.toLocaleString()],
  ["best_lines", "best lines", (r) => (r.hasLines() ? r.entry.best_lines : null),
    (r) => (r.hasLines() ? String(r.entry.best_lines ?? "–") : "–"), "lines"],
  ["mean_lines", "mean lines", (r) => (r.hasLines() ? r.entry.mean_lines : null),
    (r) => (r.hasLines() ? format(r.entry.mean_lines) : "–"), "lines"],
  ["sps", "steps/s", (r) => r.entry.sps, (r) => format(r.entry.sps)],
  ["started", "started", (r) => r.entry.started, (r) => when(r.entry.started)],
  ["duration", "duration", (r) => elapsed(r.entry), (r) => duration(elapsed(r.entry))],
];

function configText(value) {
  return value === undefined ? "–" : typeof value === "object" ? JSON.stringify(value) : String(value);
}

// A config value as its column shows it: a sampled float to 4 significant digits (the cell's title has it all).
function configShown(value) {
  return typeof value === "number" && !Number.isInteger(value) ? String(Number(value.toPrecision(4)))
    : configText(value);
}

export class RunList {
  constructor(table, filter, count, { onSelect, onFocus }) {
    Object.assign(this, { table, filter, count, onSelect, onFocus });
    this.sortKey = "started";
    this.descending = true;
    filter.addEventListener("input", () => this.render());
    table.querySelector("thead").addEventListener("click", (event) => {
      const th = event.target.closest("th[data-key]");
      if (!th) return;
      this.descending = this.sortKey === th.dataset.key ? !this.descending : false;
      this.sortKey = th.dataset.key;
      this.render();
    });
    table.querySelector("tbody").addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-id]");
      if (!row) return;
      if (event.target.matches("input[type=checkbox]")) this.onSelect(row.dataset.id, event.target.checked);
      else this.onFocus(row.dataset.id);
    });
    this.runs = [];
    this.focused = null;
    this.rows = new Map();  // run id -> its <tr>, kept from one render to the next
    this.differ = null;     // the last `differing`: {configs, keys}
    this.head = "";         // the header row's HTML as last written
  }

  update(runs, focused) {
    this.runs = runs;
    this.focused = focused;
    this.render();
  }

  // The config keys whose values differ between the runs listed that have a config: a remote
  // trainer's run has none, and would otherwise make every key look like a difference.
  // Kept while the configs are the same objects: a run list update (once a second) changes counters, not
  // configs, and comparing every key of every run's config as text took a few ms of the page's thread.
  differing(runs) {
    const configs = runs.map((r) => r.entry.config).filter((c) => c && Object.keys(c).length);
    const known = this.differ;
    if (known && known.configs.length === configs.length && known.configs.every((c, i) => c === configs[i])) {
      return known.keys;
    }
    const all = new Set(configs.flatMap((c) => Object.keys(c)));
    const keys = [...all].filter((key) => !NOISE.test(key) &&
      new Set(configs.map((c) => configText(c[key]))).size > 1).sort().slice(0, MAX_CONFIG_COLUMNS);
    this.differ = { configs, keys };
    return keys;
  }

  columns() {
    const config = this.differing(this.runs).map((key) => [`config:${key}`, key.split(".").slice(-2).join("."),
      (r) => (r.entry.config || {})[key], (r) => configShown((r.entry.config || {})[key])]);
    const anyLines = this.runs.some((r) => r.hasLines());
    return [...FIXED, ...config, ...COUNTERS.filter((c) => c[4] !== "lines" || anyLines)];
  }

  render() {
    const columns = this.columns();
    const needle = this.filter.value.trim().toLowerCase();
    const shown = this.runs.filter((r) => !needle || columns.some((c) => String(c[3](r)).toLowerCase().includes(needle))
      || Object.values(r.entry.config || {}).some((v) => configText(v).toLowerCase().includes(needle)));
    const column = columns.find((c) => c[0] === this.sortKey) || columns[0];
    const sign = this.descending ? -1 : 1;
    shown.sort((a, b) => {
      const x = column[2](a), y = column[2](b);
      if (x === y) return a.entry.id.localeCompare(b.entry.id);
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
    const head = `<th></th>` + columns.map(([key, label]) =>
      `<th data-key="${key}" class="${key === column[0] ? (this.descending ? "desc" : "asc") : ""}">${escape(label)}</th>`)
      .join("");
    if (this.head !== head) {
      this.table.querySelector("thead tr").innerHTML = this.head = head;
    }
    this.place(shown.map((r) => this.row(r, columns)));
    const count = shown.length === this.runs.length ? countOf(this.runs.length)
      : `${shown.length} of ${countOf(this.runs.length)}`;
    if (this.count.textContent !== count) this.count.textContent = count;
  }

  // The rows in this order, moving only those out of place. A list rebuilt from HTML at every update (once a
  // second with live runs) cost the page a parse and a layout of the whole page in the next frame, and
  // replaced the row under the pointer: a click whose press and release straddled an update was lost.
  place(rows) {
    const body = this.table.querySelector("tbody");
    rows.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
    while (body.children.length > rows.length) body.lastElementChild.remove();
    const ids = new Set(this.runs.map((r) => r.id));
    for (const id of this.rows.keys()) if (!ids.has(id)) this.rows.delete(id);
  }

  // The run's row, its cells rewritten where what they show changed.
  row(run, columns) {
    const e = run.entry;
    let tr = this.rows.get(e.id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.id = e.id;
      this.rows.set(e.id, tr);
    }
    const box = `<input type="checkbox" aria-label="show ${escape(e.name)} in the charts">`;
    const cells = [{ html: box }, ...columns.map((column) => this.cell(run, column))];
    if (tr.cells.length !== cells.length) tr.replaceChildren(...cells.map(() => document.createElement("td")));
    cells.forEach(({ html, cls = "", title = "" }, i) => {
      const td = tr.cells[i];
      if (td.made !== html) { td.innerHTML = html; td.made = html; }  // made: the HTML it was last given
      if (td.className !== cls) td.className = cls;
      if (td.title !== title) td.title = title;
    });
    tr.cells[0].firstChild.checked = run.selected;
    const cls = (e.live ? "live" : "") + (e.id === this.focused ? " focused" : "");
    if (tr.className !== cls) tr.className = cls;
    return tr;
  }

  // One cell: {html, cls, title}.
  cell(run, [key, , , text]) {
    const e = run.entry;
    const value = escape(String(text(run)));
    if (key === "state") {
      const live = e.live ? (e.link === "offline" ? " (offline)" : "") : "";
      return { html: `<span class="pill ${STATE_CLASS[e.state] || ""}">${value}${live}</span>` };
    }
    if (key === "name") {
      const note = e.note ? ` <span class="note" title="${escape(e.note)}">⚠ ${escape(e.note)}</span>`
        : e.about ? ` <span class="note about" title="${escape(e.about)}">${escape(e.about)}</span>` : "";
      return { html: `<span class="swatch" style="background:${run.colour}"></span>${value}${note}`, cls: "name" };
    }
    if (key.startsWith("config:")) return { html: value, title: configText((e.config || {})[key.slice(7)]) };
    return { html: value };
  }
}

export function escape(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
