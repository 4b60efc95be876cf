// The playfield and the hold/next previews, drawn on canvases.

const ROWS = 20, COLS = 10;

// tetris-gymnasium numbers the pieces 2..8 as I, O, T, S, Z, J, L; guideline colours.
export const COLOURS = {
  2: "#00f0f0", 3: "#f0f000", 4: "#a000f0", 5: "#00f000", 6: "#f00000", 7: "#0000f0", 8: "#f0a000",
};
const UNKNOWN = "#7a8194";
const SHAPES = {
  2: [[1, 1, 1, 1]],
  3: [[1, 1], [1, 1]],
  4: [[0, 1, 0], [1, 1, 1]],
  5: [[0, 1, 1], [1, 1, 0]],
  6: [[1, 1, 0], [0, 1, 1]],
  7: [[1, 0, 0], [1, 1, 1]],
  8: [[0, 0, 1], [1, 1, 1]],
};

function cell(ctx, x, y, size, colour) {
  ctx.fillStyle = colour;
  ctx.fillRect(x + 1, y + 1, size - 2, size - 2);
  ctx.fillStyle = "rgba(255,255,255,0.28)";  // a bevel so neighbouring cells read as blocks
  ctx.fillRect(x + 1, y + 1, size - 2, Math.max(2, size / 8));
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(x + 1, y + size - 1 - Math.max(2, size / 8), size - 2, Math.max(2, size / 8));
}

export function drawBoard(canvas, board) {
  const ctx = canvas.getContext("2d");
  const size = Math.min(canvas.width / COLS, canvas.height / ROWS);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#1a1f2b";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let c = 1; c < COLS; c++) { ctx.moveTo(c * size + 0.5, 0); ctx.lineTo(c * size + 0.5, ROWS * size); }
  for (let r = 1; r < ROWS; r++) { ctx.moveTo(0, r * size + 0.5); ctx.lineTo(COLS * size, r * size + 0.5); }
  ctx.stroke();
  if (!board) return;
  for (let r = 0; r < Math.min(ROWS, board.length); r++) {
    const row = board[r];
    for (let c = 0; c < Math.min(COLS, row.length); c++) {
      if (row[c]) cell(ctx, c * size, r * size, size, COLOURS[row[c]] || UNKNOWN);
    }
  }
}

// Pieces stacked vertically, each centred in a slot of the canvas's width.
export function drawPieces(canvas, kinds) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const slot = canvas.width * 2 / 3, size = canvas.width / 5;
  kinds.forEach((kind, i) => {
    const shape = SHAPES[kind];
    if (!shape) return;
    const x0 = (canvas.width - shape[0].length * size) / 2;
    const y0 = i * slot + (slot - shape.length * size) / 2;
    shape.forEach((row, r) => row.forEach((on, c) => {
      if (on) cell(ctx, x0 + c * size, y0 + r * size, size, COLOURS[kind]);
    }));
  });
}

// The agent's best placements for the current piece (a board frame's `candidates`, best first):
// ghost cells where each would land, the one it chose outlined, its value on its top cell.
// Labels stay in the top half of a cell, so every ghost cell keeps ghost pixels below them.
export const GHOST = "#c8c8c8";  // a colour no piece has
const CHOSEN = "#ffffff";

export function drawCandidates(canvas, candidates, chosen) {
  const ctx = canvas.getContext("2d");
  const size = Math.min(canvas.width / COLS, canvas.height / ROWS);
  const inset = Math.max(1, size / 10);
  ctx.fillStyle = GHOST;
  for (const { cells } of candidates) {
    for (const [r, c] of cells) ctx.fillRect(c * size + inset, r * size + inset, size - 2 * inset, size - 2 * inset);
  }
  const picked = candidates.find((k) => k.action === chosen);
  if (picked) {
    ctx.strokeStyle = CHOSEN;
    ctx.lineWidth = Math.max(1, size / 12);
    for (const [r, c] of picked.cells) ctx.strokeRect(c * size + 1, r * size + 1, size - 2, size - 2);
  }
  ctx.font = `bold ${Math.round(size * 0.6)}px ui-monospace, monospace`;
  ctx.textBaseline = "top";
  ctx.lineWidth = Math.max(2, size / 8);
  ctx.strokeStyle = "#0a0c11";
  ctx.fillStyle = CHOSEN;
  for (const { text, x, y } of labels(candidates, size, (t) => ctx.measureText(t).width)) {
    ctx.strokeText(text, x, y);
    ctx.fillText(text, x, y);
  }
}

// Where each candidate's value goes: on the top half of one of its cells (its top-left one if free),
// clear of the labels of better candidates; a value with no clear cell is left out rather than drawn
// over another (close placements would otherwise print their values on top of each other).
export function labels(candidates, size, width) {
  const inset = Math.max(1, size / 10), height = size * 0.6, placed = [];
  const clear = (a) => placed.every((b) => a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y);
  for (const { cells, score } of candidates) {
    const text = String(Number(score.toPrecision(3))), w = width(text);
    const spots = [...cells].sort((a, b) => a[0] - b[0] || a[1] - b[1])
      .map(([r, c]) => ({ text, x: c * size + inset, y: r * size + inset, w, h: height }));
    const spot = spots.find(clear);
    if (spot) placed.push(spot);
  }
  return placed;
}

// A board sent as one string of 200 digits, row by row from the top (the replay route's frames).
export function boardRows(text) {
  const rows = [];
  for (let r = 0; r < ROWS; r++) rows.push([...text.slice(r * COLS, (r + 1) * COLS)].map(Number));
  return rows;
}
