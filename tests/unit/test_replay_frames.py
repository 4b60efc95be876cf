"""`viewer.replays.Game`: any chunk of a long game, asked for in any order, is the game's own frames."""

from __future__ import annotations

import pytest
from harness.games import dellacherie_game

from tetriszmq.tetris import records
from tetriszmq.tetris.records import EpisodeRecord
from viewer import replays

PIECES = 700  # past several keyframes (every 200 pieces)


def test_chunks_asked_in_any_order_are_the_frames_of_one_pass_through_the_game():
    record = dellacherie_game(PIECES, seed=11)
    assert record.pieces == PIECES and record.lines > 100
    whole = replays.Game(record).frames(0, PIECES + 1)
    assert [f["step"] for f in whole] == list(range(PIECES + 1)) and whole[-1]["lines"] == record.lines
    game = replays.Game(record)
    for first in (650, 150, 420, 399, 0, 600, 201, 695):
        assert game.frames(first, 10) == whole[first:first + 10], first
    assert sorted(game.keyframes) == [0, 200, 400, 600]


def test_a_record_whose_game_ends_before_its_actions_do_says_so_instead_of_mislabelled_frames(tmp_path):
    lying = EpisodeRecord(seed=3, actions=bytes(40), lines=0, score=0.0, pieces=40, end="cut", features=(),
                          max_pieces=0)  # action 0 forty times: the game is over long before
    records.write(tmp_path / records.BEST, lying)
    games = replays.Games()
    with pytest.raises(replays.ReplayError, match=r"from 30: the episode has frames 0\.\.1$") as error:
        games.chunk(tmp_path, "best", 30, 5)
    assert error.value.status == 400
    whole = games.chunk(tmp_path, "best", 0, 50)
    assert whole["record"]["frames"] == len(whole["frames"]) == 2
