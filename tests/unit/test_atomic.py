"""`tetriszmq.stream.atomic`: a replaced file is the old one or the new one, never half of either."""

from __future__ import annotations

import pytest

from tetriszmq.stream.atomic import atomic_writer, write_atomic


def test_a_write_that_fails_halfway_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "trial.json"
    write_atomic(path, b"old")
    with pytest.raises(OSError, match="No space"), atomic_writer(path) as f:
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["trial.json"]
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
