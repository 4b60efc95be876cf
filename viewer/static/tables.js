// A run's history as the page keeps it: columns of values, as the viewer sends them.
//
// A snapshot's `history` has, per table, `columns` and `data` (data[i] is column i; rows before
// `decimated` are min/max buckets of older rows, see docs/VIEWER.md). Live messages append rows;
// a column seen for the first time is null in every earlier row, as on the server.

export class Table {
  constructor(json) {
    this.names = json ? [...json.columns] : ["episodes", "timesteps", "t"];
    this.data = json ? json.data.map((column) => Array.from(column)) : this.names.map(() => []);
    this.index = new Map(this.names.map((name, i) => [name, i]));
    this.raw = json ? json.raw : 0;
  }

  get length() { return this.data[0].length; }

  column(name) {
    const i = this.index.get(name);
    return i === undefined ? null : this.data[i];
  }

  // The value columns (not the x ones).
  values() { return this.names.slice(3); }

  push(row) {
    for (const name of Object.keys(row)) {
      if (!this.index.has(name)) {
        this.index.set(name, this.names.length);
        this.names.push(name);
        this.data.push(new Array(this.length).fill(null));
      }
    }
    const n = this.length;
    for (let i = 0; i < this.names.length; i++) {
      const v = row[this.names[i]];
      this.data[i][n] = typeof v === "number" ? v : null;
    }
    this.raw++;
  }
}
