"""Tetris where one action places the current piece: tetris-gymnasium's game, fast.

Same pieces, rotations, 7-bag sequence (its own randomizer and queue), spawn
position, rewards and game-over rules as ``tetris_gymnasium/Tetris`` driven by
its ``GroupedActionsObservations`` wrapper, with the same action indexing
(``col * 4 + rotation``) and legal mask. The wrapper checks collisions row by
row for every candidate; here the landing row of all candidates comes from the
column heights in one numpy expression, and the afterstate features of all
candidates are computed as one stack (see `tetriszmq.tetris.features`).

Observation: ``{"features": (40, F) float32, "mask": (40,) int8}`` where row
``a`` holds the features of the board placement ``a`` would leave (zeros when
``a`` is illegal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tetris_gymnasium.components.tetromino_queue import TetrominoQueue
from tetris_gymnasium.components.tetromino_randomizer import BagRandomizer
from tetris_gymnasium.envs.tetris import Tetris
from tetris_gymnasium.mappings.rewards import RewardsMapping

from tetriszmq.tetris.features import (
    COLS,
    DEFAULT_FEATURES,
    FEATURES,
    PLAYFIELD,
    ROWS,
    Afterstates,
    check_names,
    column_masks,
    upper_bounds,
)

__all__ = ["DEFAULT_FEATURES", "FEATURES", "N_ACTIONS", "PlacementTetris"]

N_ACTIONS = COLS * 4
PAD = 4  # tetris-gymnasium's wall columns left of the playfield, which its x coordinates include
KIND_OFFSET = 2  # tetris-gymnasium numbers pieces after 0 (empty) and 1 (wall): I=2 ... L=8
REWARDS = RewardsMapping()


@dataclass(frozen=True)
class PieceTable:
    """Everything about one piece that does not depend on the board, indexed by legal placement.

    Legality depends only on the walls (the grouped wrapper's ``collision_with_frame``
    after a drop can only hit a wall), so it is fixed per piece.
    """

    kind: int
    actions: np.ndarray  # (K,) legal action ids, ascending
    slot: np.ndarray  # (40,) action id -> index into `actions`, -1 when illegal
    rows: np.ndarray  # (K, 4) row of each cell inside the rotated matrix
    cols: np.ndarray  # (K, 4) playfield column of each cell
    col_bits: np.ndarray  # (K, 10) int64 the cells as column bitmasks, the matrix's top row at bit 0
    middle: np.ndarray  # (K,) middle row of the piece inside its matrix, for landing height
    mask: np.ndarray  # (40,) int8
    spawn_rows: np.ndarray  # (4,) cells of the unrotated piece where it spawns
    spawn_cols: np.ndarray


def _piece_table(index: int) -> PieceTable:
    base = Tetris.TETROMINOES[index].matrix
    actions, rows, cols = [], [], []
    for action in range(N_ACTIONS):
        col, rotation = divmod(action, 4)
        matrix = np.rot90(base, k=rotation)  # the wrapper's `rotate` applied `rotation` times
        r, c = np.nonzero(matrix)
        c = c + col - matrix.shape[1] // 2  # the wrapper centres the matrix on the chosen column
        if c.min() >= 0 and c.max() < COLS:
            actions.append(action)
            rows.append(r)
            cols.append(c)
    actions_arr, rows_arr, cols_arr = np.array(actions), np.array(rows), np.array(cols)
    col_bits = np.zeros((len(actions), COLS), dtype=np.int64)
    np.bitwise_or.at(col_bits, (np.arange(len(actions))[:, None], cols_arr), np.left_shift(1, rows_arr))
    slot = np.full(N_ACTIONS, -1)
    slot[actions_arr] = np.arange(len(actions))
    mask = np.zeros(N_ACTIONS, dtype=np.int8)
    mask[actions_arr] = 1
    spawn_rows, spawn_cols = np.nonzero(base)
    return PieceTable(
        kind=index + KIND_OFFSET,
        actions=actions_arr,
        slot=slot,
        rows=rows_arr,
        cols=cols_arr,
        col_bits=col_bits,
        middle=(rows_arr.min(axis=1) + rows_arr.max(axis=1)) / 2,
        mask=mask,
        spawn_rows=spawn_rows,
        spawn_cols=spawn_cols + (COLS + 2 * PAD) // 2 - base.shape[0] // 2 - PAD,
    )


PIECES: tuple[PieceTable, ...] = tuple(_piece_table(i) for i in range(len(Tetris.TETROMINOES)))


class PlacementTetris(gym.Env):
    """One step = one piece placed; observation = features of every candidate afterstate.

    :param features: feature names (see `tetriszmq.tetris.features.FEATURES`); None: the default set.
    :param max_pieces: truncate an episode after this many pieces; 0 or None: never.
    :param render_mode: None or "ansi".
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        features: Sequence[str] | None = None,
        max_pieces: int | None = 0,
        render_mode: str | None = None,
    ) -> None:
        self.feature_names = check_names(features or DEFAULT_FEATURES)
        self.max_pieces = max_pieces or 0
        self.render_mode = render_mode
        n = len(self.feature_names)
        self.observation_space = spaces.Dict({
            "features": spaces.Box(0.0, np.broadcast_to(upper_bounds(self.feature_names), (N_ACTIONS, n)),
                                   dtype=np.float32),
            "mask": spaces.MultiBinary(N_ACTIONS),
        })
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._queue = TetrominoQueue(BagRandomizer(len(PIECES)))
        self.board = np.zeros((ROWS, COLS), dtype=np.uint8)  # piece kinds, like tetris-gymnasium's playfield
        self._piece = PIECES[0]
        self._landing_row = np.zeros(0, dtype=int)
        self._blocked = np.zeros(0, dtype=bool)
        self._pieces = self._lines = 0
        self._score = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._queue.reset(seed=seed)  # tetris-gymnasium's own 7-bag: same seed, same pieces
        self.board[:] = 0
        self._piece = PIECES[self._queue.get_next_tetromino()]
        self._pieces = self._lines = 0
        self._score = 0.0
        obs = self._observe()
        return obs, {"lines_cleared": 0, "action_mask": obs["mask"]}

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        slot = int(self._piece.slot[int(action)])
        lines = 0
        if slot < 0:  # like the grouped wrapper's default: an illegal placement ends the game
            reward, terminated = float(REWARDS.invalid_action), True
        elif self._blocked[slot]:  # the piece collides where it starts: tetris-gymnasium's game over
            reward, terminated = float(REWARDS.game_over), True
        else:
            lines = self._lock(slot)
            self._piece = PIECES[self._queue.get_next_tetromino()]
            terminated = self._spawn_collides()
            reward = float(REWARDS.game_over if terminated else REWARDS.alife + lines**2 * COLS)
        self._pieces += 1
        self._lines += lines
        self._score += reward
        truncated = not terminated and 0 < self.max_pieces <= self._pieces
        obs = self._observe()
        info: dict[str, Any] = {"lines_cleared": lines, "action_mask": obs["mask"]}
        if terminated or truncated:
            info["episode_stats"] = {"reward": self._score, "lines": self._lines, "pieces": self._pieces}
        return obs, reward, terminated, truncated, info

    def board_frame(self) -> dict[str, Any]:
        """The viewer's picture: playfield with the falling piece at its spawn, next pieces, counters."""
        return {
            "board": self._board_with_piece().tolist(),
            "next": [int(i) + KIND_OFFSET for i in self._queue.get_queue()],
            "hold": None,
            "step": self._pieces,
            "lines": self._lines,
            "score": self._score,
        }

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        board = self._board_with_piece()
        return "\n".join("".join(str(v) if v else "." for v in row) for row in board)

    def _board_with_piece(self) -> np.ndarray:
        board = self.board.copy()
        if not self._spawn_collides():  # tetris-gymnasium does not draw a piece that overlaps the stack
            board[self._piece.spawn_rows, self._piece.spawn_cols] = self._piece.kind
        return board

    def _spawn_collides(self) -> bool:
        return bool(self.board[self._piece.spawn_rows, self._piece.spawn_cols].any())

    def _lock(self, slot: int) -> int:
        """Write the current piece where it lands and clear full rows; return their number."""
        piece = self._piece
        self.board[self._landing_row[slot] + piece.rows[slot], piece.cols[slot]] = piece.kind
        full = self.board.all(axis=1)
        n = int(full.sum())
        if n:
            self.board = np.concatenate([np.zeros((n, COLS), dtype=np.uint8), self.board[~full]])
        return n

    def _observe(self) -> dict[str, np.ndarray]:
        piece, filled = self._piece, self.board > 0
        cols = column_masks(filled)
        self._landing_row, self._blocked = landing_rows(piece, filled, cols)
        afterstates = place_all(piece, cols, self._landing_row)
        features = np.zeros((N_ACTIONS, len(self.feature_names)), dtype=np.float32)
        features[piece.actions] = afterstates.compute(self.feature_names)
        return {"features": features, "mask": piece.mask.copy()}


def landing_rows(piece: PieceTable, filled: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each legal placement after a hard drop, and whether it is blocked (game over).

    A piece that starts above the surface of its columns lands one row above the
    first surface cell it meets. Otherwise (a stack reaching the top rows) we
    replay tetris-gymnasium exactly: game over if the piece overlaps the stack at
    row 0, else a row-by-row drop, which may slide it into a cave under an overhang.
    """
    surface = np.bitwise_count((cols & -cols) - 1).astype(np.int64)  # top filled row, 20 when empty
    rows = (surface[piece.cols] - 1 - piece.rows).min(axis=1)
    blocked = np.zeros(len(rows), dtype=bool)
    for slot in np.flatnonzero(rows < 0):
        cells_rows, cells_cols = piece.rows[slot], piece.cols[slot]
        if filled[cells_rows, cells_cols].any():
            blocked[slot] = True
            continue
        row = 0
        while _fits(filled, cells_rows + row + 1, cells_cols):
            row += 1
        rows[slot] = row
    return rows, blocked


def _fits(filled: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    return rows.max() < ROWS and not filled[rows, cols].any()


def place_all(piece: PieceTable, cols: np.ndarray, landing_row: np.ndarray) -> Afterstates:
    """Boards after every legal placement (full rows cleared), as one stack of column masks.

    A blocked placement is drawn where it would rest, its cells above the top cut
    off, so that its features look like the near-full board that ends the game.
    """
    shift = landing_row[:, None]
    if shift.min() >= 0:
        placed = piece.col_bits << shift
    else:
        placed = np.where(shift >= 0, piece.col_bits << np.maximum(shift, 0), piece.col_bits >> np.maximum(-shift, 0))
    after = cols | placed
    full = np.bitwise_and.reduce(after, axis=1) & PLAYFIELD
    lines = np.bitwise_count(full).astype(np.int64)
    eroded_cells = lines * np.bitwise_count(placed & full[:, None]).sum(axis=1)
    if full.any():
        after = _clear_rows(after, full)
    return Afterstates(
        cols=after,
        lines=lines,
        landing_height=ROWS - landing_row - piece.middle,
        eroded_cells=eroded_cells,
    )


def _clear_rows(cols: np.ndarray, full: np.ndarray) -> np.ndarray:
    """Remove the full rows of every board of the stack, top-most first.

    Removing row r shifts the rows above it down one bit and leaves the rows
    below (and so the next full row) where they are.
    """
    while full.any():
        top = full & -full  # the highest remaining full row, 0 where none is left
        above = np.where(top, top - 1, 0)[:, None]
        cols = ((cols & above) << 1) | (cols & ~(above | top[:, None]))
        full = full ^ top
    return cols
