// Charts that overlay the selected runs, drawn with uPlot (viewer/static/vendor/uplot/).
//
// One chart per quantity (lines, reward, length per episode; every SB3 scalar), one line per
// selected run in the run's colour: the raw values faint, the debiased EMA (as TensorBoard's
// smoothing) on top. Runs have their own x values, so each run is folded onto one shared grid
// of two columns per pixel over the x range shown (min and max of the points in each, in the
// order they came, so spikes stay; the smoothed curve one point per column): uPlot then draws
// at most two points per pixel per line, however many runs and points there are, and a zoom
// refolds the range zoomed into. The fold reads the run's table in place, in one pass that
// also smooths, so a redraw allocates only the grid. Hover reads each run's own nearest point,
// at full resolution. Redraws are scheduled (`Charts.frame`): a chart is redrawn at most every
// MIN_INTERVAL ms, visible ones only, in turn; a frame starts no redraw that its chart's last
// cost (uPlot's drawing included) says would take it past FRAME_BUDGET ms, so many live runs never
// make a frame long. A redraw reads nothing from the layout: widths come from a ResizeObserver.

const MIN_INTERVAL = 250;
const FRAME_BUDGET = 3;
const COSTS_KEPT = 600;
const TINY = 1e-9;  // shown as 0: no scalar is logged that small on purpose; a smoothed run of zeros decays there

// TensorBoard's smoothing: an exponential moving average divided by its weights' sum so far,
// so that the first points are not pulled towards zero.
class Ema {
  constructor(weight) { this.weight = weight; this.last = 0; this.decay = 1; }

  add(y) {
    this.last = this.last * this.weight + (1 - this.weight) * y;
    this.decay *= this.weight;
    return this.weight === 0 ? y : this.last / (1 - this.decay);
  }
}

// Whether row ``i`` is a point of the line: a value at an x, not before the point kept before it.
function usable(xs, ys, i, previous) {
  const x = xs[i];
  return Number.isFinite(x) && Number.isFinite(ys[i]) && !(x < previous);
}

// A value for a person: "2.9e-47" is what a smoothed curve of zeros after a one decays to, and means 0.
export function format(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  if (a < TINY) return "0";
  if (a < 1e-3) return v.toExponential(1);  // a learning rate: 1.0e-4, not 0.00010
  return v.toPrecision(2);
}

function nearest(xs, x) {
  let lo = 0, hi = xs.length - 1;
  if (hi < 0) return -1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo > 0 && Math.abs(xs[lo - 1] - x) < Math.abs(xs[lo] - x) ? lo - 1 : lo;
}

// One run's line on the grid of ``buckets`` columns over [lo, hi]: its raw points as two values per
// column (min and max, in the order they came) into ``raw``, its smoothed curve as the column's
// last smoothed value into ``smoothed`` (when smoothing). Smoothing starts at the run's first
// point, whatever the range. Returns what the chart's value box and log scale need.
function fold(line, weight, lo, hi, step, buckets, raw, smoothed) {
  const { xs, ys } = line, ema = new Ema(weight);
  let bucket = -1, low = 0, high = 0, lowAt = 0, highAt = 0, previous = -Infinity, latest = null, points = 0;
  let positive = true, shown = null;  // shown: the smoothed value of the bucket's last point
  const flush = () => {
    if (bucket < 0) return;
    const lowFirst = lowAt <= highAt;
    raw[2 * bucket] = lowFirst ? low : high;
    if (low !== high) raw[2 * bucket + 1] = lowFirst ? high : low;
    if (smoothed) smoothed[2 * bucket + 1] = shown;
  };
  for (let i = 0; i < xs.length; i++) {
    if (!usable(xs, ys, i, previous)) continue;
    const x = previous = xs[i], y = ys[i];
    const value = ema.add(y);
    points++;
    if (!(y > 0)) positive = false;
    if (x < lo || x > hi) { latest = value; continue; }
    const b = Math.min(buckets - 1, Math.floor((x - lo) / step));
    if (b !== bucket) {
      flush();
      bucket = b; low = high = y; lowAt = highAt = i;
    } else if (y < low) {
      low = y; lowAt = i;
    } else if (y > high) {
      high = y; highAt = i;
    }
    latest = shown = value;
  }
  flush();
  return { positive, points, latest: smoothed ? latest : line.ys[line.lastAt] };
}

// The smoothed value at row ``at`` (hover over a smoothed chart): the same pass as `fold`, up to it.
function smoothedAt(line, weight, at) {
  const { xs, ys } = line, ema = new Ema(weight);
  let value = null, previous = -Infinity;
  for (let i = 0; i <= at; i++) {
    if (!usable(xs, ys, i, previous)) continue;
    previous = xs[i];
    value = ema.add(ys[i]);
  }
  return value;
}

function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${alpha})`;
}

// One chart: a title, a value box (hover or latest values) and a uPlot.
class Chart {
  constructor(charts, key, title, source, column, holder, small) {
    Object.assign(this, { charts, key, title, source, column, small });
    this.el = document.createElement("div");
    this.el.className = "chart" + (small ? " small" : "");
    this.el.dataset.chart = key;
    this.el.innerHTML = `<div class="chart-head"><span class="chart-title"></span><span class="chart-value"></span>
      <button class="log" title="logarithmic y axis">log</button></div><div class="plot"></div>`;
    this.el.querySelector(".chart-title").textContent = title;
    this.value = this.el.querySelector(".chart-value");
    this.valueHtml = "";
    this.plotEl = this.el.querySelector(".plot");
    this.logButton = this.el.querySelector(".log");
    this.log = null;  // null: log scale for a loss that is always positive, linear otherwise, until clicked
    this.logButton.addEventListener("click", () => {
      this.log = !this.logScale;
      this.shape = null;
      this.touch(true);
    });
    holder.appendChild(this.el);
    this.plot = null;
    this.shape = null;   // what the uPlot instance was built for: rebuilt when it changes
    this.ids = null;     // the runs its series are for, in order: swapped in place when they change
    this.data = null;    // the arrays uPlot draws from (`buffers`)
    this.lone = [];      // per uPlot series: its run has one point, a line of nothing, so it is drawn as a dot
    this.lines = [];     // per drawn run: {run, xs, ys, smoothed}
    this.dirty = true;
    this.urgent = true;
    this.drawn = 0;
    this.zoomed = false;
    this.visible = true;
    this.cost = 0;       // ms the last redraw took: the scheduler's guess of the next one
    this.width = 0;      // the plot's width in px, as the ResizeObserver last said (0: not yet)
    charts.observer?.observe(this.el);
    charts.sizes.observe(this.plotEl);
  }

  touch(urgent = false) { this.dirty = true; this.urgent ||= urgent; }

  // What to draw: each selected run with a point in this column, as views of its table's columns
  // (no copy) and where its first and last points are.
  collect() {
    const axis = this.charts.axis;
    const lines = [];
    for (const run of this.charts.selectedRuns()) {
      const table = run[this.source];
      const ys = table.column(this.column), xs = table.column(axis);
      if (!ys || !xs || !table.length) continue;
      let firstAt = 0, lastAt = xs.length - 1;
      while (firstAt < xs.length && !usable(xs, ys, firstAt, -Infinity)) firstAt++;
      while (lastAt > firstAt && !usable(xs, ys, lastAt, -Infinity)) lastAt--;
      if (firstAt === xs.length) continue;
      lines.push({ run, xs, ys, firstAt, lastAt, latest: null });
    }
    return lines;
  }

  draw() {
    const started = performance.now();
    this.dirty = this.urgent = false;
    this.drawn = started;
    const lines = this.lines = this.collect();
    this.el.dataset.runs = String(lines.length);
    this.el.hidden = !lines.length;
    if (!lines.length) { this.el.dataset.points = "0"; this.destroy(); this.showLatest(); return; }
    if (!performance.getEntriesByName("first chart paint").length) performance.mark("first chart paint");
    const smoothing = this.charts.weight > 0;
    // Read once: asking the layout for a width at every redraw forces a layout of the page in the middle of
    // the frame (whatever changed since the last one: the run list, value boxes), and again for each chart.
    const width = this.width || (this.width = this.plotEl.clientWidth) || 300;
    const { data, positive, points } = this.grid(lines, smoothing, width);
    this.el.dataset.points = String(points);
    this.logScale = this.log ?? (/loss/.test(this.column) && positive);
    this.logButton.classList.toggle("on", this.logScale);
    const shape = [this.charts.axis, smoothing, this.logScale, positive].join("|");
    const ids = lines.map((l) => l.run.id).join("|");
    if (shape !== this.shape) {
      this.destroy();
      this.shape = shape;
      this.zoomed = false;
      this.plot = new uPlot(this.options(lines, smoothing, positive, width), data, this.plotEl);
    } else {
      // In a batch uPlot draws before it returns, not in a microtask after this frame's redraws: `cost` then
      // counts the drawing, the larger part of a redraw, and the frame budget holds.
      this.plot.batch(() => {
        if (ids !== this.ids) this.reseries(lines, smoothing);
        this.plot.setData(data, !this.zoomed);
      });
    }
    this.ids = ids;
    this.showLatest();
    this.cost = performance.now() - started;
  }

  // uPlot's data: the shared grid's x values, then each line folded onto it (raw, then smoothed).
  grid(lines, smoothing, width) {
    let lo = Math.min(...lines.map((l) => l.xs[l.firstAt])), hi = Math.max(...lines.map((l) => l.xs[l.lastAt]));
    if (this.zoomed && this.plot) ({ min: lo, max: hi } = this.plot.scales.x);
    if (!(hi > lo)) hi = lo + 1;
    const buckets = Math.max(50, Math.round(width)), step = (hi - lo) / buckets;
    const data = this.buffers(2 * buckets, 1 + lines.length * (smoothing ? 2 : 1)), xs = data[0];
    for (let b = 0; b < buckets; b++) { xs[2 * b] = lo + b * step; xs[2 * b + 1] = lo + (b + 0.5) * step; }
    let positive = true, points = 0, k = 1;
    this.lone.length = 0;
    for (const l of lines) {
      const raw = data[k++].fill(null), smoothed = smoothing ? data[k++].fill(null) : null;
      const folded = fold(l, this.charts.weight, lo, hi, step, buckets, raw, smoothed);
      l.latest = folded.latest;
      positive &&= folded.positive;
      points += folded.points;
      this.lone[k - 1] = this.lone[k - (smoothing ? 2 : 1)] = folded.points === 1;
    }
    return { data, positive, points };
  }

  // The arrays uPlot draws from, kept from one redraw to the next: a redraw four times a second of
  // 17 arrays of 2,000 values each would otherwise leave megabytes a second for the garbage
  // collector, whose pauses land in whatever frame is running.
  buffers(size, count) {
    if (this.data?.length !== count || this.data[0].length !== size) {
      this.data = Array.from({ length: count }, () => new Array(size).fill(null));
    }
    return this.data;
  }

  // uPlot's series after the x values: per run, the raw line (faint when smoothing), then the smoothed one.
  series(lines, smoothing) {
    const series = [];
    const line = (run, stroke, width) => ({ label: run.id, stroke, width, spanGaps: true,
      points: { show: (u, i) => this.lone[i], size: 6, stroke, fill: stroke } });
    for (const { run } of lines) {
      series.push(line(run, smoothing ? rgba(run.colour, 0.22) : run.colour, 1));
      if (smoothing) series.push(line(run, run.colour, 1.6));
    }
    return series;
  }

  // Runs joined or left the chart: swap its series in place. A new uPlot (DOM, canvases, axes) costs a
  // frame 5-15 ms; runs start and reach a chart at any time, so that would land in a frame of the stream.
  reseries(lines, smoothing) {
    for (let i = this.plot.series.length - 1; i > 0; i--) this.plot.delSeries(i);
    for (const series of this.series(lines, smoothing)) this.plot.addSeries(series);
  }

  options(lines, smoothing, positive, width) {
    const series = [{}, ...this.series(lines, smoothing)];
    const axisStyle = { stroke: "#8a93a6", grid: { stroke: "#262c3a", width: 1 }, ticks: { stroke: "#262c3a" },
      font: "11px system-ui, sans-serif" };
    return {
      width, height: this.small ? 140 : 210,
      legend: { show: false },
      cursor: { sync: { key: "runs" }, drag: { x: true, y: false } },
      scales: { x: { time: this.charts.axis === "t" },
        y: this.logScale ? (positive ? { distr: 3 } : { distr: 4, log: 10 }) : {} },
      axes: [{ ...axisStyle, size: 30 }, { ...axisStyle, size: 48, values: (u, vals) => vals.map(format) }],
      series,
      hooks: {
        setCursor: [(u) => this.showHover(u)],
        // A drag zooms: refold the range zoomed into (on the next frame, once uPlot has set it).
        setSelect: [(u) => { if (u.select.width > 0) { this.zoomed = true; this.touch(true); } }],
        ready: [(u) => u.over.addEventListener("dblclick", () => { this.zoomed = false; this.touch(true); })],
      },
    };
  }

  showHover(u) {
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined || u.cursor.left < 0) { this.showLatest(); return; }
    const x = u.data[0][idx], weight = this.charts.weight;
    this.showValues(this.lines.map((l) => {
      const i = nearest(l.xs.subarray(l.firstAt, l.lastAt + 1), x) + l.firstAt;
      return [l.run.colour, weight > 0 ? smoothedAt(l, weight, i) : l.ys[i]];
    }));
  }

  showLatest() {
    this.showValues(this.lines.map((l) => [l.run.colour, l.latest]));
  }

  showValues(values) {
    const shown = values.slice(0, 8).map(([colour, v]) => `<b style="color:${colour}">${format(v)}</b>`);
    if (values.length > 8) shown.push("…");
    const html = shown.join(" ");
    if (this.valueHtml !== html) this.value.innerHTML = this.valueHtml = html;  // reading innerHTML serialises it
  }

  // A new width (the ResizeObserver's, measured in the layout the frame does anyway): refold onto its columns.
  resize(width) {
    if (!width || width === this.width) return;
    this.width = width;
    if (this.plot) this.plot.setSize({ width, height: this.plot.height });
    this.touch(true);
  }

  destroy() {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    this.shape = this.ids = null;
  }
}

// Every chart of the page, grouped by namespace, and the redraw scheduler.
export class Charts {
  constructor(main, groups, selectedRuns) {
    this.main = main;
    this.groups = groups;
    this.selectedRuns = selectedRuns;
    this.axis = "timesteps";
    this.weight = 0.6;
    this.charts = new Map();
    this.sections = new Map();
    this.costs = [];  // [performance.now() at its start, ms of script here] per animation frame that redrew
                      // (bench/page.py reads them, and finds each frame in Chromium's trace by its start)
    this.frames = 0;
    this.turn = 0;    // the chart the next frame looks at first
    this.observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        const chart = this.byElement.get(e.target);
        if (chart) chart.visible = e.isIntersecting;
      }
    }, { rootMargin: "200px" }) : null;
    this.byElement = new Map();
    this.sizes = new ResizeObserver((entries) => {
      for (const e of entries) this.byPlot.get(e.target)?.resize(Math.round(e.contentRect.width));
    });
    this.byPlot = new Map();
  }

  // The chart of one table column, made on first use in its namespace's group.
  ensure(source, column) {
    const key = `${source}:${column}`;
    let chart = this.charts.get(key);
    if (chart) return chart;
    let holder, title = column, small = true;
    if (source === "episodes") {
      title = `${column} per episode`;
      small = column === "length";
      holder = small ? this.section("episode/", true) : this.main;
    } else {
      if (column === "sps") title = "steps/s";
      const slash = column.indexOf("/");
      const group = column === "sps" ? "time/" : slash > 0 ? column.slice(0, slash + 1) : "other";
      holder = this.section(group, group !== "time/");
    }
    chart = new Chart(this, key, title, source, column, holder, small);
    this.byElement.set(chart.el, chart);
    this.byPlot.set(chart.plotEl, chart);
    this.charts.set(key, chart);
    this.sort(holder);
    return chart;
  }

  section(name, open) {
    let section = this.sections.get(name);
    if (!section) {
      section = document.createElement("details");
      section.className = "group";
      section.open = open;
      section.dataset.group = name;
      section.innerHTML = `<summary></summary><div class="grid"></div>`;
      section.querySelector("summary").textContent = name;
      section.addEventListener("toggle", () => this.touchAll(true));
      this.sections.set(name, section);
      const after = [...this.sections.keys()].sort().find((other) => other > name);
      this.groups.insertBefore(section, after ? this.sections.get(after) : null);
    }
    return section.querySelector(".grid");
  }

  sort(holder) {
    const order = { "episodes:lines": 0, "episodes:reward": 1 };
    [...holder.children].sort((a, b) => (order[a.dataset.chart] ?? 9) - (order[b.dataset.chart] ?? 9) ||
      a.dataset.chart.localeCompare(b.dataset.chart)).forEach((el) => holder.appendChild(el));
  }

  // A run's table got rows: its charts need a redraw (soon, not at once).
  touchTable(run, source) {
    for (const column of run[source].values()) {
      if (source === "episodes" && column === "lines" && !run.hasLines()) continue;
      this.ensure(source, column).touch();
    }
  }

  touchAll(urgent = false) { this.charts.forEach((c) => c.touch(urgent)); }

  // One animation frame's share of redraws: charts take turns, from where the last frame stopped.
  frame() {
    const start = performance.now();
    const charts = [...this.charts.values()];
    let worked = false;
    for (let n = 0; n < charts.length; n++) {
      const chart = charts[(this.turn + n) % charts.length];
      // A hidden chart (no run has its column yet) is drawn anyway: drawing is what shows it.
      if (!chart.dirty || !(chart.visible || chart.el.hidden) || chart.el.closest("details:not([open])")) continue;
      if (!chart.urgent && start - chart.drawn < MIN_INTERVAL) continue;
      if (worked && performance.now() - start + chart.cost > FRAME_BUDGET) {
        this.turn = (this.turn + n) % charts.length;  // first in the next frame
        break;
      }
      chart.draw();
      worked = true;
    }
    this.frames++;
    if (worked) {
      this.costs.push([start, performance.now() - start]);
      if (this.costs.length > COSTS_KEPT) this.costs.splice(0, this.costs.length - COSTS_KEPT);
    }
  }
}
