"""bench/learning.py's report: its learning curve's rows, whose labels must tell its points apart."""

from __future__ import annotations

from pathlib import Path

from learning import Arm, curve_table, minute_checkpoints


def test_the_quick_curve_takes_a_point_every_three_seconds_and_labels_each_apart(tmp_path: Path):
    """``--quick``: 6 s of training, a point every 0.05 minutes."""
    (tmp_path / "checkpoints").mkdir()
    arm = Arm("straight", 1, tmp_path, seconds=6.0, clock=[(0.0, 0.0)])
    points = minute_checkpoints(arm, 0.05)
    assert [minute for minute, _ in points] == [0.05, 0.1]
    table = curve_table({("straight", 1): [(0.05, 1.0), (0.1, 2.0)], ("resumed", 1): [(0.05, None), (0.1, 3.0)]})
    assert [line.split() for line in table] == [["minute", "straight", "1", "resumed", "1"],
                                                ["0.05", "1.0", "-"], ["0.1", "2.0", "3.0"]]
