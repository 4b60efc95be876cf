// Small canvas line charts that stay fast for long runs.
//
// Points live in growable typed arrays. A redraw is O(points) with no
// allocation: when there are more points than pixels, each pixel column is
// drawn as the min..max of the points it covers (so spikes stay visible).
// Charts only mark themselves dirty on new data; `drawAll` runs on
// requestAnimationFrame and skips clean charts.

export class Series {
  constructor(colour, width = 1) {
    this.colour = colour;
    this.width = width;
    this.x = new Float64Array(256);
    this.y = new Float64Array(256);
    this.n = 0;
  }

  push(x, y) {
    if (this.n === this.x.length) {
      const grow = (a) => { const b = new Float64Array(a.length * 2); b.set(a); return b; };
      this.x = grow(this.x);
      this.y = grow(this.y);
    }
    this.x[this.n] = x;
    this.y[this.n] = y;
    this.n++;
  }

  clear() { this.n = 0; }
}

// A moving average over the last `window` values, kept as a running sum.
export class MovingAverage extends Series {
  constructor(colour, window) {
    super(colour, 2);
    this.window = new Float64Array(window);
    this.sum = 0;
    this.count = 0;
  }

  add(x, y) {
    const slot = this.count % this.window.length;
    if (this.count >= this.window.length) this.sum -= this.window[slot];
    this.window[slot] = y;
    this.sum += y;
    this.count++;
    this.push(x, this.sum / Math.min(this.count, this.window.length));
  }

  clear() { super.clear(); this.sum = 0; this.count = 0; }
}

const PAD = { left: 44, right: 8, top: 20, bottom: 16 };

export class Chart {
  constructor(canvas, title, series) {
    this.canvas = canvas;
    this.title = title;
    this.series = series;
    this.dirty = true;
  }

  touch() { this.dirty = true; }

  clear() { this.series.forEach((s) => s.clear()); this.dirty = true; }

  points() { return this.series[0].n; }

  draw() {
    const canvas = this.canvas, ratio = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * ratio), h = Math.round(canvas.clientHeight * ratio);
    if (!w || !h) return;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const cw = w / ratio, ch = h / ratio;
    ctx.clearRect(0, 0, cw, ch);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#8a93a6";
    ctx.fillText(this.title, PAD.left, 12);
    canvas.dataset.points = String(this.points());
    const box = this.bounds();
    if (!box) return;
    const plot = { x: PAD.left, y: PAD.top, w: cw - PAD.left - PAD.right, h: ch - PAD.top - PAD.bottom };
    this.axes(ctx, plot, box);
    for (const s of this.series) this.line(ctx, s, plot, box);
    const last = this.series[0];
    ctx.fillStyle = "#d8dde8";
    ctx.textAlign = "right";
    ctx.fillText(format(last.y[last.n - 1]), cw - PAD.right, 12);
    ctx.textAlign = "left";
  }

  bounds() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of this.series) {
      if (!s.n) continue;
      x0 = Math.min(x0, s.x[0]); x1 = Math.max(x1, s.x[s.n - 1]);
      for (let i = 0; i < s.n; i++) { const v = s.y[i]; if (v < y0) y0 = v; if (v > y1) y1 = v; }
    }
    if (x0 === Infinity) return null;
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    if (x0 === x1) { x1 = x0 + 1; }
    return { x0, x1, y0, y1 };
  }

  axes(ctx, plot, box) {
    ctx.strokeStyle = "#262c3a";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (const f of [0, 0.5, 1]) {
      const y = Math.round(plot.y + plot.h * (1 - f)) + 0.5;
      ctx.moveTo(plot.x, y); ctx.lineTo(plot.x + plot.w, y);
      ctx.fillText(format(box.y0 + (box.y1 - box.y0) * f), 2, y + 4);
    }
    ctx.stroke();
    ctx.fillText(format(box.x0), plot.x, plot.y + plot.h + 13);
    ctx.textAlign = "right";
    ctx.fillText(format(box.x1), plot.x + plot.w, plot.y + plot.h + 13);
    ctx.textAlign = "left";
  }

  line(ctx, s, plot, box) {
    if (!s.n) return;
    const sx = plot.w / (box.x1 - box.x0), sy = plot.h / (box.y1 - box.y0);
    const px = (x) => plot.x + (x - box.x0) * sx, py = (y) => plot.y + plot.h - (y - box.y0) * sy;
    ctx.strokeStyle = s.colour;
    ctx.lineWidth = s.width;
    ctx.beginPath();
    if (s.n <= plot.w * 2) {
      ctx.moveTo(px(s.x[0]), py(s.y[0]));
      for (let i = 1; i < s.n; i++) ctx.lineTo(px(s.x[i]), py(s.y[i]));
    } else {
      // One vertical stroke per pixel column: min..max of the points in it.
      let column = Math.floor(px(s.x[0])), lo = s.y[0], hi = s.y[0];
      ctx.moveTo(column, py(s.y[0]));
      for (let i = 1; i <= s.n; i++) {
        const c = i < s.n ? Math.floor(px(s.x[i])) : Infinity;
        if (c !== column) {
          ctx.lineTo(column, py(lo)); ctx.lineTo(column, py(hi));
          if (i === s.n) break;
          column = c; lo = hi = s.y[i];
        } else {
          const v = s.y[i]; if (v < lo) lo = v; if (v > hi) hi = v;
        }
      }
    }
    ctx.stroke();
  }
}

export function drawAll(charts) {
  for (const chart of charts) {
    if (chart.dirty) { chart.dirty = false; chart.draw(); }
  }
}

export function format(v) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  if (a === 0) return "0";
  return v.toPrecision(2);
}
