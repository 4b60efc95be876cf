"""Tetris where one action places the current piece: tetris-gymnasium's game, fast.

Same pieces, rotations, 7-bag sequence (its own randomizer and queue), spawn
position, rewards and game-over rules as ``tetris_gymnasium/Tetris`` driven by
its ``GroupedActionsObservations`` wrapper, with the same action indexing
(``col * 4 + rotation``) and legal mask. The wrapper checks collisions row by
row for every candidate; here the landing row of each candidate comes from the
column heights, and one compiled kernel places all candidates and measures the
boards they leave (see `tetriszmq.tetris.features`).

Observation: ``{"features": (40, F) float32, "mask": (40,) int8}`` where row
``a`` holds the features of the board placement ``a`` would leave (zeros when
``a`` is illegal).

Every episode is reproducible: it has a seed even when reset without one (SB3's
vectorised envs seed only the first reset and then reset with ``seed=None``),
drawn from the env's own generator, and its placements are recorded, so the
last step hands over an `EpisodeRecord` in ``info["episode_record"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    ROWS,
    WALLS,
    Afterstates,
    check_names,
    columns_of,
    drop_rows,
    lookup_tables,
    place_and_measure,
    upper_bounds,
)
from tetriszmq.tetris.records import MAX_ACTIONS, EpisodeRecord

__all__ = ["DEFAULT_FEATURES", "FEATURES", "N_ACTIONS", "PlacementTetris"]

N_ACTIONS = COLS * 4
PAD = 4  # tetris-gymnasium's wall columns left of the playfield, which its x coordinates include
KIND_OFFSET = 2  # tetris-gymnasium numbers pieces after 0 (empty) and 1 (wall): I=2 ... L=8
REWARDS = RewardsMapping()
SEED_LIMIT = 2**31  # drawn episode seeds are 1 .. 2^31 - 1: tetris-gymnasium ignores seed 0
BOARD_STATS = ("holes", "max_height", "bumpiness")  # per episode, means over the boards the agent left
ALL_COLUMNS = columns_of(FEATURES)
_LOCKED_AT = columns_of(("lines", "max_height", *BOARD_STATS))  # what a lock reads of its afterstate's features
Scorer = Callable[[dict[str, np.ndarray]], np.ndarray]  # observation -> (40,) the agent's value of each placement


class StepInfo(dict):
    """A step's info dict, which a deep copy copies one level deep.

    SB3's `DummyVecEnv` deep-copies every step's infos (a tenth of a training step with 4
    envs); everything in ours is made new for the step (the mask, the episode record and
    stats, the terminal observation SB3 adds) and never changed afterwards, so sharing it is safe.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> StepInfo:
        return StepInfo(self)


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
    col_bits: np.ndarray  # (K, 12) int64 the cells as walled column bitmasks, the matrix's top row at bit 0
    limit: np.ndarray  # (K, 4) the matrix's lowest row at which each cell rests on the floor: 19 - its row
    top: np.ndarray  # (K,) 20 - the piece's middle row in its matrix: landing height = top - landing row
    unblocked: np.ndarray  # (K,) all False, read-only: what most steps' `landing_rows` returns as blocked
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
    col_bits = np.zeros((len(actions), COLS + 2), dtype=np.int64)
    np.bitwise_or.at(col_bits, (np.arange(len(actions))[:, None], cols_arr + 1), np.left_shift(1, rows_arr))
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
        limit=ROWS - 1 - rows_arr,
        unblocked=_read_only(np.zeros(len(actions), dtype=bool)),
        top=ROWS - (rows_arr.min(axis=1) + rows_arr.max(axis=1)) / 2,
        mask=mask,
        spawn_rows=spawn_rows,
        spawn_cols=spawn_cols + (COLS + 2 * PAD) // 2 - base.shape[0] // 2 - PAD,
    )


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


PIECES: tuple[PieceTable, ...] = tuple(_piece_table(i) for i in range(len(Tetris.TETROMINOES)))
# A board no taller than this cannot overlap a piece at its spawn: the spawn check then needs no board lookup.
SPAWN_CLEAR_HEIGHT = ROWS - 1 - max(int(p.spawn_rows.max()) for p in PIECES)
UNWRITTEN_LIMIT = 1_000  # locks kept before the board of piece kinds is drawn though nobody read it


class PlacementTetris(gym.Env):
    """One step = one piece placed; observation = features of every candidate afterstate.

    :param features: feature names (see `tetriszmq.tetris.features.FEATURES`); None: the default set.
    :param max_pieces: truncate an episode after this many pieces; 0 or None: never.
    :param render_mode: None or "ansi".

    ``scorer``: when set (`set_scorer`), board frames carry the current piece's best
    candidates as the agent values them (see `candidates`).
    """

    metadata = {"render_modes": ["ansi"]}
    record_limit = MAX_ACTIONS  # placements an episode record keeps; the rest of a longer episode is cut

    def __init__(
        self,
        features: Sequence[str] | None = None,
        max_pieces: int | None = 0,
        render_mode: str | None = None,
    ) -> None:
        self.feature_names = check_names(features or DEFAULT_FEATURES)
        self._columns = columns_of(self.feature_names)  # of `Afterstates.values`
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
        self._board = np.zeros((ROWS, COLS), dtype=np.uint8)  # piece kinds, like tetris-gymnasium's playfield
        self._unwritten: list[tuple[PieceTable, int, int, int]] = []  # locks not yet drawn on it: see `board`
        self._cols = WALLS  # the same board as column bitmasks, what the features read
        self._heights = np.zeros(COLS, dtype=np.int64)  # its column heights, for the landing rows
        self._max_height = 0.0
        self._piece = PIECES[0]
        self._landing_row = np.zeros(0, dtype=int)
        self._blocked = np.zeros(0, dtype=bool)
        self._pieces = self._lines = 0
        self._score = 0.0
        self.episode_seed = 0
        self._actions = bytearray()
        self._cut: tuple[int, float, int] | None = None
        self._board_sums = [0, 0, 0, 0]  # boards left (pieces locked), their holes, max heights, bumpiness
        self._after: Afterstates | None = None
        self._obs: dict[str, np.ndarray] = {}
        self.scorer: Scorer | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        # no seed (an auto-reset): draw one, so that this episode too is replayable from its seed alone
        self.episode_seed = seed or int(self.np_random.integers(1, SEED_LIMIT))
        self._queue.reset(seed=self.episode_seed)  # tetris-gymnasium's own 7-bag: same seed, same pieces
        self._board[:] = 0
        self._unwritten.clear()
        self._cols, self._heights, self._max_height = WALLS, np.zeros(COLS, dtype=np.int64), 0.0
        self._piece = PIECES[self._queue.get_next_tetromino()]
        self._pieces = self._lines = 0
        self._score = 0.0
        self._actions = bytearray()
        self._cut = None
        self._board_sums = [0, 0, 0, 0]
        obs = self._observe()
        return obs, StepInfo(lines_cleared=0, action_mask=obs["mask"])

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        slot = int(self._piece.slot[int(action)])
        if len(self._actions) < self.record_limit:
            self._actions.append(int(action))
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
        if self._cut is None and self._pieces == self.record_limit and not (terminated or truncated):
            self._cut = (self._lines, self._score, self._pieces)
        obs = self._observe()
        info = StepInfo(lines_cleared=lines, action_mask=obs["mask"])
        if terminated or truncated:
            info["episode_stats"] = self._episode_stats()
            info["episode_record"] = self._record("game over" if terminated else "piece cap")
        return obs, reward, terminated, truncated, info

    def board_frame(self, chosen: int | None = None, k: int = 5) -> dict[str, Any]:
        """The viewer's picture: playfield with the falling piece at its spawn, next pieces, counters.

        With a `scorer`, also ``candidates`` (see `candidates`); ``chosen``, the placement the
        agent is about to make when the caller knows it, is then included and named.
        """
        frame = {
            "board": self._board_with_piece().tolist(),
            "next": [int(i) + KIND_OFFSET for i in self._queue.get_queue()],
            "hold": None,
            "step": self._pieces,
            "lines": self._lines,
            "score": self._score,
        }
        if self.scorer is not None:
            frame["candidates"] = self.candidates(k, chosen)
            if chosen is not None:
                frame["chosen"] = int(chosen)
        return frame

    def set_scorer(self, scorer: Scorer | None) -> None:
        """Show the agent's values in board frames (a VecEnv reaches it with ``env_method``)."""
        self.scorer = scorer

    def candidates(self, k: int = 5, chosen: int | None = None) -> list[dict[str, Any]]:
        """The current piece's ``k`` best placements by the scorer's values, best first, plus ``chosen``.

        Each: ``action`` (``col * 4 + rotation``), ``cells`` (the four ``[row, col]`` the piece
        would occupy where it lands, row 0 at the top, cells above the board left out) and ``score``.
        Placements that end the game at once are left out unless chosen.
        """
        assert self.scorer is not None
        piece = self._piece
        scores = np.asarray(self.scorer(self._obs), dtype=np.float64)
        playable = piece.actions[~self._blocked]
        best = playable[np.argsort(-scores[playable], kind="stable")[:k]].tolist()
        if chosen is not None and piece.slot[chosen] >= 0 and chosen not in best:
            best.append(int(chosen))
        return [{"action": a, "cells": cells, "score": round(float(scores[a]), 3)}
                for a, cells in zip(best, self._cells(best), strict=True)]

    def _cells(self, actions: list[int]) -> list[list[list[int]]]:
        """Each action's landed cells, as ``[row, col]`` lists: one numpy pass for them all (a Python
        loop over each action's cells was half of a board frame's candidates)."""
        slots = self._piece.slot[actions]
        rows = (self._landing_row[slots, None] + self._piece.rows[slots]).tolist()
        cols = self._piece.cols[slots].tolist()
        return [[[r, c] for r, c in zip(rs, cs, strict=True) if r >= 0] for rs, cs in zip(rows, cols, strict=True)]

    def _episode_stats(self) -> dict[str, float]:
        """The game's own counters, and the mean holes, max height and bumpiness of the boards left."""
        return {"reward": self._score, "lines": self._lines, "pieces": self._pieces, **self._board_means()}

    def _board_means(self) -> dict[str, float]:
        locked, *totals = self._board_sums
        return {name: round(total / max(locked, 1), 3) for name, total in zip(BOARD_STATS, totals, strict=True)}

    def _record(self, end: str) -> EpisodeRecord:
        lines, score, pieces = self._cut or (self._lines, self._score, self._pieces)
        return EpisodeRecord(seed=self.episode_seed, actions=bytes(self._actions), lines=lines, score=score,
                             pieces=pieces, end="cut" if self._cut else end, features=self.feature_names,
                             max_pieces=self.max_pieces, stats=self._board_means())

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
        if self._max_height <= SPAWN_CLEAR_HEIGHT:
            return False
        return bool(self.board[self._piece.spawn_rows, self._piece.spawn_cols].any())

    def _lock(self, slot: int) -> int:
        """Lock the current piece where it lands; return the rows it cleared.

        The result was already computed, as this placement's afterstate: its column masks
        become the board, and its holes, max height and bumpiness are added to the episode's
        board stats. The board of piece kinds is drawn later (`board`).
        """
        after = self._after
        self._cols, self._heights = after.cols[slot], after.heights[slot]
        lines, self._max_height, *stats = after.values[slot, _LOCKED_AT].tolist()
        sums = self._board_sums
        sums[0] += 1
        for i, value in enumerate(stats, start=1):
            sums[i] += int(value)
        self._unwritten.append((self._piece, slot, int(self._landing_row[slot]), int(lines)))
        if len(self._unwritten) >= UNWRITTEN_LIMIT:
            self._draw()
        return int(lines)

    @property
    def board(self) -> np.ndarray:
        """``(20, 10)`` piece kinds, like tetris-gymnasium's playfield: 0 empty, 2-8 the pieces.

        Drawn when read (frames at 30/s, tall boards, tests), or every `UNWRITTEN_LIMIT` locks,
        not at every lock: the features read the column masks, and writing cells and clearing
        rows here cost a tenth of a step.
        """
        self._draw()
        return self._board

    def _draw(self) -> None:
        for piece, slot, row, lines in self._unwritten:
            self._board[row + piece.rows[slot], piece.cols[slot]] = piece.kind
            if lines:
                full = self._board.all(axis=1)
                self._board = np.concatenate([np.zeros((lines, COLS), dtype=np.uint8), self._board[~full]])
        self._unwritten.clear()

    def _observe(self) -> dict[str, np.ndarray]:
        piece = self._piece
        self._landing_row, self._blocked = landing_rows(piece, self._heights, lambda: self.board)
        self._after, features = place_all(piece, self._cols, self._landing_row, self._columns)
        self._obs = {"features": features, "mask": piece.mask.copy()}
        return self._obs


def landing_rows(piece: PieceTable, heights: np.ndarray,
                 filled: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row of each legal placement after a hard drop, and whether it is blocked (game over).

    ``heights``: the board's column heights; ``filled``: returns the board, non-zero where
    filled, read only when a piece would end above the top.

    A piece that starts above the surface of its columns lands one row above the
    first surface cell it meets. Otherwise (a stack reaching the top rows) we
    replay tetris-gymnasium exactly: game over if the piece overlaps the stack at
    row 0, else a row-by-row drop, which may slide it into a cave under an overhang.
    """
    rows, lowest = drop_rows(piece.limit, piece.cols, heights)
    if lowest >= 0:
        return rows, piece.unblocked
    board = filled()
    blocked = np.zeros(len(rows), dtype=bool)
    for slot in np.flatnonzero(rows < 0):
        cells_rows, cells_cols = piece.rows[slot], piece.cols[slot]
        if board[cells_rows, cells_cols].any():
            blocked[slot] = True
            continue
        row = 0
        while _fits(board, cells_rows + row + 1, cells_cols):
            row += 1
        rows[slot] = row
    return rows, blocked


def _fits(filled: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    return rows.max() < ROWS and not filled[rows, cols].any()


def place_all(piece: PieceTable, cols: np.ndarray, landing_row: np.ndarray,
              columns: np.ndarray = ALL_COLUMNS) -> tuple[Afterstates, np.ndarray]:
    """Boards after every legal placement (full rows cleared) with their features, and the observation.

    A blocked placement is drawn where it would rest, its cells above the top cut
    off, so that its features look like the near-full board that ends the game.
    ``columns``: the observation's features, as columns of `Afterstates.values`.
    """
    *after, observation = place_and_measure(cols, piece.col_bits, landing_row, piece.top, piece.actions, columns,
                                            N_ACTIONS, *lookup_tables())
    return Afterstates(*after), observation
