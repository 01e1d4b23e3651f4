"""atomic_path: output is complete or absent, also when two jobs write the same folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecg_experiments import io


def _write_folder(tmp: Path, text: str) -> None:
    tmp.mkdir()
    (tmp / "split.csv").write_text(text)


def test_a_folder_is_replaced_whole_and_kept_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "split"
    with io.atomic_path(target) as tmp:
        _write_folder(tmp, "old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        _write_folder(tmp, "half")
        raise RuntimeError("stopped while writing")
    assert (target / "split.csv").read_text() == "old"
    with io.atomic_path(target) as tmp:
        _write_folder(tmp, "new")
    assert [p.name for p in target.iterdir()] == ["split.csv"]
    assert (target / "split.csv").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["split"]  # no temporary left behind


def test_a_folder_another_job_writes_in_between_is_moved_aside(tmp_path: Path,
                                                               monkeypatch) -> None:
    # two jobs of a sweep save the same split: the other one's folder lands between this
    # job's removal of the old folder and its rename (today: OSError "Directory not empty")
    target = tmp_path / "split"
    real_replace = os.replace
    raced = []

    def replace(src, dst):
        if Path(dst) == target and not raced:
            raced.append(True)
            other = tmp_path / "other"
            _write_folder(other, "the other job's")
            real_replace(other, target)
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with io.atomic_path(target) as tmp:
        _write_folder(tmp, "this job's")
    assert raced and (target / "split.csv").read_text() == "this job's"
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


def test_the_old_folder_is_put_back_when_the_new_one_cannot_be_put_in_place(
        tmp_path: Path, monkeypatch) -> None:
    import errno

    target = tmp_path / "split"
    with io.atomic_path(target) as tmp:
        _write_folder(tmp, "old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == target and Path(src).parent.name.endswith(".tmp") \
                and Path(src).name == target.name:
            raise OSError(errno.EACCES, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="Permission denied"), io.atomic_path(target) as tmp:
        _write_folder(tmp, "new")
    assert (target / "split.csv").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["split"]
