"""The legend printed under the benches' tables says what each column measures."""

from __future__ import annotations

import os

from harness.tables import legend


def test_the_legend_says_box_percent_counts_in_cores_and_where_it_tops_out():
    """box % is a sum over CPUs (200 on a busy 2-CPU box): read as a share of the machine, it would seem to
    exceed 100."""
    said = legend()
    assert "box %: all CPUs' busy time, in % of one core as cpu % is" in said
    assert f"({os.cpu_count()} CPUs all busy: {100 * os.cpu_count()})" in said
