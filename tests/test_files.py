"""Files written whole or not at all (odeflow/files.py), and lines appended whole."""

from __future__ import annotations

import errno

import pytest

from odeflow.files import append_line, is_disk_full, replacing, write_atomic
from runner.sweeps.state import SweepRecord, load


def test_a_rewrite_that_fails_midway_leaves_the_old_content_and_no_temporary_file(tmp_path):
    path = write_atomic(tmp_path / "state.json", '{"old": 1}')
    with pytest.raises(OSError), replacing(path) as f:
        f.write('{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_sweep_state_save_that_fails_keeps_the_state_before_it(tmp_path, monkeypatch):
    record = SweepRecord("s-1", "best_val_loss", "minimize", {"train.lr": "uniform(0, 1)"})
    record.save(tmp_path)
    record.next_job = 5
    monkeypatch.setattr("os.fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        record.save(tmp_path)
    monkeypatch.undo()
    assert load(tmp_path).next_job == 0


def test_an_appended_line_never_glues_onto_a_cut_one(tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    append_line(path, '{"c": 3}')
    append_line(path, '{"d": 4}')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"b": ', '{"c": 3}', '{"d": 4}']


def test_disk_full_is_recognised_through_the_errors_it_caused():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from exc
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
