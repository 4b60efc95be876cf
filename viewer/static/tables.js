// A run's history as the page keeps it: columns of values, as the viewer sends them.
//
// A snapshot's `history` has, per table, `columns` and `data` (data[i] is column i; rows before
// `decimated` are min/max buckets of older rows, see docs/VIEWER.md). Live messages append rows;
// a column seen for the first time is blank in every earlier row, as on the server. Columns are
// Float64Arrays with NaN for a blank: half the memory of arrays holding nulls, which the engine
// keeps as boxed values (50 runs of 6,000 rows by 20 columns: tens of MB).

const BLANK = NaN;

function filled(length, capacity) {
  return new Float64Array(capacity).fill(BLANK, 0, length);
}

export class Table {
  constructor(json) {
    this.names = json ? [...json.columns] : ["episodes", "timesteps", "t"];
    this.length = json ? (json.data[0] || []).length : 0;
    this.capacity = Math.max(64, this.length * 2);
    this.data = json ? json.data.map((column) => {
      const values = filled(0, this.capacity);
      column.forEach((v, i) => { values[i] = v === null ? BLANK : v; });
      return values;
    }) : this.names.map(() => filled(0, this.capacity));
    this.index = new Map(this.names.map((name, i) => [name, i]));
    this.raw = json ? json.raw : 0;
  }

  // The values of a column so far (a view, not a copy), or null if there is no such column.
  column(name) {
    const i = this.index.get(name);
    return i === undefined ? null : this.data[i].subarray(0, this.length);
  }

  // The value columns (not the x ones).
  values() { return this.names.slice(3); }

  push(row) {
    for (const name of Object.keys(row)) {
      if (!this.index.has(name)) {
        this.index.set(name, this.names.length);
        this.names.push(name);
        this.data.push(filled(this.length, this.capacity));
      }
    }
    if (this.length === this.capacity) {
      this.capacity *= 2;
      this.data = this.data.map((column) => { const grown = filled(0, this.capacity); grown.set(column); return grown; });
    }
    for (let i = 0; i < this.names.length; i++) {
      const v = row[this.names[i]];
      this.data[i][this.length] = typeof v === "number" ? v : BLANK;
    }
    this.length++;
    this.raw++;
  }
}
