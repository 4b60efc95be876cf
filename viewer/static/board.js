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
