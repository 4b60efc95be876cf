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
  }

  update(runs, focused) {
    this.runs = runs;
    this.focused = focused;
    this.render();
  }

  // The config keys whose values differ between the runs listed that have a config: a remote
  // trainer's run has none, and would otherwise make every key look like a difference.
  differing(runs) {
    const configs = runs.map((r) => r.entry.config).filter((c) => c && Object.keys(c).length);
    const keys = new Set(configs.flatMap((c) => Object.keys(c)));
    return [...keys].filter((key) => !NOISE.test(key) &&
      new Set(configs.map((c) => configText(c[key]))).size > 1).sort().slice(0, MAX_CONFIG_COLUMNS);
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
    const headRow = this.table.querySelector("thead tr");
    if (headRow.innerHTML !== head) headRow.innerHTML = head;
    this.table.querySelector("tbody").innerHTML = shown.map((r) => this.row(r, columns)).join("");
    this.count.textContent = shown.length === this.runs.length ? countOf(this.runs.length)
      : `${shown.length} of ${countOf(this.runs.length)}`;
  }

  row(run, columns) {
    const e = run.entry;
    const cells = columns.map(([key, , , text]) => {
      const value = escape(String(text(run)));
      if (key === "state") {
        const live = e.live ? (e.link === "offline" ? " (offline)" : "") : "";
        return `<td><span class="pill ${STATE_CLASS[e.state] || ""}">${value}${live}</span></td>`;
      }
      if (key === "name") {
        const note = e.note ? ` <span class="note" title="${escape(e.note)}">⚠ ${escape(e.note)}</span>`
          : e.about ? ` <span class="note about" title="${escape(e.about)}">${escape(e.about)}</span>` : "";
        return `<td class="name"><span class="swatch" style="background:${run.colour}"></span>${value}${note}</td>`;
      }
      if (key.startsWith("config:")) return `<td title="${escape(configText((e.config || {})[key.slice(7)]))}">${value}</td>`;
      return `<td>${value}</td>`;
    }).join("");
    const focused = e.id === this.focused ? " focused" : "";
    return `<tr data-id="${escape(e.id)}" class="${e.live ? "live" : ""}${focused}">` +
      `<td><input type="checkbox" aria-label="show ${escape(e.name)} in the charts"${run.selected ? " checked" : ""}></td>` +
      `${cells}</tr>`;
  }
}

export function escape(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
