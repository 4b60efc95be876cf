"""PlacementTetris plays exactly like tetris-gymnasium's grouped wrapper, only faster.

The reference is the installed tetris-gymnasium: its `GroupedActionsObservations`
for whole games and its own `collision` for landing rows, so a change of
either side shows up here as a mismatch at a named placement.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import tetris_gymnasium.envs  # noqa: F401  (registers the env id)
from gymnasium.utils.env_checker import check_env
from tetris_gymnasium.envs.tetris import Tetris
from tetris_gymnasium.wrappers.grouped import GroupedActionsObservations

from tetriszmq.tetris.dellacherie import Dellacherie
from tetriszmq.tetris.envs import LinesReward
from tetriszmq.tetris.features import DELLACHERIE_FEATURES, FEATURES, board_features, column_heights, column_masks
from tetriszmq.tetris.placement_env import (
    N_ACTIONS,
    PIECES,
    UNWRITTEN_LIMIT,
    PlacementTetris,
    landing_rows,
    place_all,
)

PAD = 4


def parse(rows: list[str]) -> np.ndarray:
    """A 20x10 bool board whose bottom rows are drawn with X (filled) and . (empty)."""
    board = np.zeros((20, 10), dtype=bool)
    board[20 - len(rows):] = [[c == "X" for c in row] for row in rows]
    return board


def reference() -> gym.Env:
    return GroupedActionsObservations(gym.make("tetris_gymnasium/Tetris"))


def tallest(obs: dict, rng: np.random.Generator) -> int:
    """Stack as high as possible (noisily): drives games into both kinds of game over."""
    score = obs["features"][:, 0] + 3 * rng.random(N_ACTIONS)
    return int(np.argmax(np.where(obs["mask"] > 0, score, -np.inf)))


EXPERT = Dellacherie()


def mostly_dellacherie(obs: dict, rng: np.random.Generator, expert: Dellacherie = EXPERT) -> int:
    """Clear lines for long stretches, with random slips that leave holes and overhangs."""
    if rng.random() < 0.15:
        return int(rng.choice(np.flatnonzero(obs["mask"])))
    return expert(obs)


@pytest.mark.parametrize(("seed", "policy"),
                         [(1, mostly_dellacherie), (2, mostly_dellacherie), (3, tallest), (4, tallest)])
def test_every_placement_matches_the_grouped_wrapper(seed, policy):
    ref, ours = reference(), PlacementTetris(features=DELLACHERIE_FEATURES)  # landing_height first
    rng = np.random.default_rng(seed)
    _, ref_info = ref.reset(seed=seed)
    obs, info = ours.reset(seed=seed)
    lines = games = blocked_game_overs = 0
    for i in range(350):
        base = ref.unwrapped
        assert np.array_equal(ref_info["action_mask"], info["action_mask"]), f"mask at placement {i}"
        assert np.array_equal(base.board[:20, PAD:-PAD], ours.board), f"board at placement {i}"
        assert ours.board_frame()["board"] == base.crop_padding(base.project_tetromino()).tolist(), f"frame at {i}"
        action = policy(obs, rng)
        before = ours.board.copy()
        _, ref_reward, ref_over, _, ref_info = ref.step(action)
        obs, reward, terminated, truncated, info = ours.step(action)
        assert type(reward) is float
        assert (reward, terminated, info["lines_cleared"]) == (ref_reward, ref_over, ref_info["lines_cleared"]), i
        assert not truncated
        lines += info["lines_cleared"]
        if terminated:
            games += 1
            blocked_game_overs += np.array_equal(before, ours.board)  # the piece never locked
            obs, info = ours.reset()  # no seed (like SB3's auto-reset): ours draws the episode's seed ...
            _, ref_info = ref.reset(seed=ours.episode_seed)  # ... and the game is tetris-gymnasium's with it
    if policy is tallest:  # the rare rules were exercised: game over by a blocked placement and at spawn
        assert 0 < blocked_game_overs < games
    else:
        assert lines > 50


def test_landing_rows_match_tetris_gymnasiums_drop_on_ragged_tall_boards():
    """Near the top, pieces may start inside the stack (game over) or in a cave under an overhang."""
    base = gym.make("tetris_gymnasium/Tetris").unwrapped
    base.reset(seed=1)
    rng = np.random.default_rng(0)
    caves = 0
    for _ in range(40):
        filled = rng.random((20, 10)) < np.linspace(0.15, 0.6, 20)[:, None]
        base.board[:20, PAD:-PAD] = filled
        for index, piece in enumerate(PIECES):
            rows, blocked = landing_rows(piece, column_heights(column_masks(filled)), lambda board=filled: board)
            for slot, action in enumerate(piece.actions):
                expected_row, expected_blocked = _tetris_gymnasium_drop(base, index, action)
                assert blocked[slot] == expected_blocked
                if not expected_blocked:
                    assert rows[slot] == expected_row
                    caves += filled[:expected_row, piece.cols[slot]].any()  # landed under a filled cell
    assert caves > 0


def _tetris_gymnasium_drop(base: Tetris, index: int, action: int) -> tuple[int, bool]:
    """The grouped wrapper's placement, as its step then its base env's commit perform it."""
    col, rotation = divmod(int(action), 4)
    tetromino = base.tetrominoes[index]
    for _ in range(rotation):
        tetromino = base.rotate(tetromino)
    x = col + base.padding - tetromino.matrix.shape[1] // 2
    if base.collision(tetromino, x, 0):
        return -1, True
    y = 0
    while not base.collision(tetromino, x, y + 1):
        y += 1
    return y, False


def test_same_seed_same_pieces_and_other_seeds_differ():
    def frames(seed: int) -> list[dict]:
        env = PlacementTetris()
        obs, _ = env.reset(seed=seed)
        seen = [env.board_frame()]
        for _ in range(10):
            obs, _, terminated, _, _ = env.step(first_legal(obs))
            if terminated:
                break
            seen.append(env.board_frame())
        return seen

    assert frames(7) == frames(7)
    assert frames(7) != frames(8)


def first_legal(obs: dict) -> int:
    return int(np.flatnonzero(obs["mask"])[0])


WELLS_AND_TRANSITIONS = [
    ".XX.......",
    ".XXX.X....",
    ".XXX.X....",
]
HOLES = [
    "X.........",
    "X.........",
    "..........",
    "XX........",
    "..........",
]


def test_well_and_transition_counts_on_a_hand_made_board():
    values = dict(zip(FEATURES, board_features(parse(WELLS_AND_TRANSITIONS), FEATURES), strict=True))
    assert values["cumulative_wells"] == (1 + 2 + 3) + (1 + 2)  # column 0 against the wall, column 4
    assert values["row_transitions"] == 4 + 6 + 6  # only the three stack rows count
    assert values["column_transitions"] == 10  # every column: one change, at its top or at the floor
    assert values["aggregate_height"] == 3 + 3 + 2 + 2
    assert values["bumpiness"] == 3 + 0 + 1 + 2 + 2 + 2
    assert values["max_height"] == 3
    assert values["holes"] == values["hole_depth"] == values["rows_with_holes"] == 0


def test_hole_counts_on_a_hand_made_board():
    values = dict(zip(FEATURES, board_features(parse(HOLES), FEATURES), strict=True))
    assert values["holes"] == 3  # column 0: rows 17 and 19; column 1: row 19
    assert values["hole_depth"] == 2 + 3 + 1  # filled cells above each hole
    assert values["rows_with_holes"] == 2
    assert values["column_transitions"] == 5 + 3 + 8
    assert values["bumpiness"] == 3 + 2
    assert values["aggregate_height"] == 5 + 2


def features_cell_by_cell(filled: np.ndarray) -> dict[str, int]:
    """The module docstring's definitions of `tetriszmq.tetris.features`, one cell at a time."""
    rows, cols = filled.shape
    tops = [next((r for r in range(rows) if filled[r, c]), rows) for c in range(cols)]
    heights = [rows - t for t in tops]
    hole = [[not filled[r, c] and r > tops[c] for c in range(cols)] for r in range(rows)]
    walled = np.pad(filled, ((0, 0), (1, 1)), constant_values=True)
    well = [[not filled[r, c] and walled[r, c] and walled[r, c + 2] for c in range(cols)] for r in range(rows)]
    return {
        "holes": sum(map(sum, hole)),
        "bumpiness": sum(abs(a - b) for a, b in zip(heights, heights[1:], strict=False)),
        "aggregate_height": sum(heights),
        "max_height": max(heights),
        "row_transitions": sum(int(walled[r, c] != walled[r, c + 1]) for r in range(rows - max(heights), rows)
                               for c in range(cols + 1)),
        "column_transitions": sum(int(filled[r, c] != (filled[r + 1, c] if r + 1 < rows else True))
                                  for r in range(rows) for c in range(cols)),
        "cumulative_wells": sum(next(k for k in range(r + 2) if k > r or not well[r - k][c])
                                for r in range(rows) for c in range(cols) if well[r][c]),
        "hole_depth": sum(int(filled[:r, c].sum()) for r in range(rows) for c in range(cols) if hole[r][c]),
        "rows_with_holes": sum(any(row) for row in hole),
    }


def test_every_board_feature_matches_its_cell_by_cell_definition_on_random_ragged_boards():
    rng = np.random.default_rng(11)
    names = [n for n in FEATURES if n not in ("lines", "landing_height", "eroded_cells")]
    for _ in range(60):
        tops = rng.integers(0, 21, size=10)
        filled = (np.arange(20)[:, None] >= tops) & (rng.random((20, 10)) < rng.uniform(0.5, 1.0))
        ours = dict(zip(names, board_features(filled, names), strict=True))
        assert ours == features_cell_by_cell(filled)


def ragged_board_with_a_well(rng: np.random.Generator) -> np.ndarray:
    """Random ragged columns over up to 4 rows full but for one column: most pieces clear something."""
    tops = rng.integers(4, 21, size=10)
    filled = (np.arange(20)[:, None] >= tops) & (rng.random((20, 10)) < rng.uniform(0.6, 1.0))
    depth = rng.integers(0, 5)
    filled[20 - depth:] = True
    filled[20 - depth:, rng.integers(10)] = False
    return filled


def placed_cell_by_cell(filled: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The board after writing the cells and removing full rows, the rows removed and the eroded cells."""
    board = filled.copy()
    board[rows, cols] = True
    full = board.all(axis=1)
    lines = int(full.sum())
    return np.vstack([np.zeros((lines, 10), dtype=bool), board[~full]]), lines, lines * int(full[rows].sum())


def test_every_afterstate_matches_placing_the_piece_cell_by_cell():
    """The compiled placement (line clears, erosion, landing height) and all 12 features, candidate by candidate."""
    rng = np.random.default_rng(5)
    cleared = 0
    for _ in range(40):
        filled = ragged_board_with_a_well(rng)
        cols = column_masks(filled)
        for piece in PIECES:
            rows, blocked = landing_rows(piece, column_heights(cols), lambda board=filled: board)
            after, observation = place_all(piece, cols, rows)
            for slot, action in enumerate(piece.actions):
                cell_rows = rows[slot] + piece.rows[slot]
                board, lines, eroded = placed_cell_by_cell(filled, cell_rows, piece.cols[slot])
                expected = {**features_cell_by_cell(board), "lines": lines, "eroded_cells": eroded,
                            "landing_height": 20 - (cell_rows.min() + cell_rows.max()) / 2}
                assert dict(zip(FEATURES, after.values[slot].tolist(), strict=True)) == expected
                assert observation[action].tolist() == after.values[slot].tolist()
                assert np.array_equal(after.cols[slot], column_masks(board))
                cleared += lines > 0
            assert not blocked.any()
    assert cleared > 100


def test_a_flat_i_piece_completing_a_row_reports_lines_erosion_and_landing():
    filled = parse(["XXX....XXX", "XXX....XXX"])
    piece = PIECES[0]  # I
    rows, blocked = landing_rows(piece, column_heights(column_masks(filled)), lambda board=filled: board)
    after, _ = place_all(piece, column_masks(filled), rows)
    slot = piece.slot[5 * 4 + 0]  # flat, centred on column 5: cells in columns 3..6
    assert not blocked[slot]
    values = dict(zip(FEATURES, after.compute(FEATURES)[slot], strict=True))
    assert (values["lines"], values["eroded_cells"], values["landing_height"]) == (1, 4, 1)
    assert values["aggregate_height"] == 6  # one row of XXX....XXX is left
    assert values["row_transitions"] == 2


def test_step_reports_rewards_stats_and_frames_the_trainer_reads():
    env = PlacementTetris(max_pieces=30)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    frame = env.board_frame()
    assert len(frame["board"]) == 20 and all(len(row) == 10 for row in frame["board"])
    assert sum(v > 0 for row in frame["board"] for v in row) == 4  # the falling piece, at its spawn
    assert len(frame["next"]) == 4 and all(2 <= k <= 8 for k in frame["next"]) and frame["hold"] is None
    total, lines = 0.0, 0
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(first_legal(obs))
        total += reward
        lines += info["lines_cleared"]
        if terminated or truncated:
            break
    stats = info["episode_stats"]
    assert {key: stats.pop(key) for key in ("reward", "lines", "pieces")} == {
        "reward": total, "lines": lines, "pieces": env.board_frame()["step"]}
    assert set(stats) == {"holes", "max_height", "bumpiness"}  # means over the boards left, tests/test_records.py
    assert env.board_frame()["score"] == total


def test_a_board_nobody_reads_is_drawn_every_so_often_and_right_when_read():
    """Cells are written lazily; a long game whose board is never read keeps a bounded backlog."""
    unread, read = PlacementTetris(features=DELLACHERIE_FEATURES), PlacementTetris(features=DELLACHERIE_FEATURES)
    (obs, _), _ = unread.reset(seed=6), read.reset(seed=6)
    for _ in range(UNWRITTEN_LIMIT + 200):
        action = EXPERT(obs)
        obs, _, terminated, _, _ = unread.step(action)
        read.step(action)
        read.board  # noqa: B018  (drawn at every step)
        assert not terminated and len(unread._unwritten) < UNWRITTEN_LIMIT
    assert np.array_equal(unread.board, read.board) and unread.board.any()


def test_a_deep_copy_of_a_step_info_shares_what_the_env_made_for_that_step():
    """SB3's DummyVecEnv deep-copies every step's infos; ours are new each step and never changed after."""
    env = PlacementTetris(max_pieces=3)
    obs, _ = env.reset(seed=2)
    for _ in range(3):
        obs, _, _, _, info = env.step(first_legal(obs))
    copied = copy.deepcopy([info])[0]
    assert copied == info and copied is not info
    assert all(copied[key] is info[key] for key in info)
    assert set(info) >= {"lines_cleared", "action_mask", "episode_stats", "episode_record"}
    copied["TimeLimit.truncated"] = True
    assert "TimeLimit.truncated" not in info


def test_piece_cap_truncates_and_illegal_placement_ends_the_game():
    env = PlacementTetris(features=DELLACHERIE_FEATURES, max_pieces=25)
    obs, _ = env.reset(seed=1)
    expert = Dellacherie()
    for piece in range(1, 26):
        obs, _, terminated, truncated, info = env.step(expert(obs))
        assert not terminated and truncated == (piece == 25)
    assert info["episode_stats"]["pieces"] == 25

    obs, _ = env.reset(seed=1)
    illegal = int(np.flatnonzero(obs["mask"] == 0)[0])
    _, reward, terminated, _, info = env.step(illegal)
    assert (reward, terminated) == (-0.1, True)  # the grouped wrapper's penalty, and its default: game over
    assert info["episode_stats"]["pieces"] == 1


def test_passes_gymnasiums_env_checker():
    check_env(PlacementTetris(max_pieces=50), skip_render_check=True)


def test_lines_reward_pays_per_line_and_keeps_the_games_own_score():
    plain = PlacementTetris(features=DELLACHERIE_FEATURES, max_pieces=300)
    shaped = LinesReward(PlacementTetris(features=DELLACHERIE_FEATURES, max_pieces=300))
    player = Dellacherie()
    (obs, _), _ = plain.reset(seed=3), shaped.reset(seed=3)
    paid: dict[int, float] = {}
    done = False
    while not done:
        action = player(obs)
        obs, score, terminated, truncated, info = plain.step(action)
        _, reward, *_, shaped_info = shaped.step(action)
        assert reward == (score if terminated else 1.0 + 10 * info["lines_cleared"])
        paid[info["lines_cleared"]] = reward
        done = terminated or truncated
    assert paid[0] == 1.0 and len(paid) > 1, "Dellacherie clears lines within 300 pieces"
    assert shaped_info["episode_stats"] == info["episode_stats"], "the game's own score and lines are reported"
