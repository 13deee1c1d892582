"""Atomic writes: a reader sees the old file or the new one, and nothing is left behind."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import pytest

from longbatch import fsutil
from longbatch.fsutil import atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_makes_the_missing_folders_once_and_writes_the_file(tmp_path):
    target = tmp_path / "reports" / "doc" / "model" / "report.md"
    atomic_write_text(target, "one", durable=False)
    atomic_write_text(target.with_suffix(".json"), "{}")  # the folder exists now
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and target.with_suffix(".json").read_text() == "{}"
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "report.md"
    target.write_text("old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_temp_name_already_taken_is_skipped_and_left_alone(tmp_path, monkeypatch):
    """A crashed run (or another host sharing the folder) left a temp file under the name this
    process would pick next: it is never opened, truncated or renamed by this writer."""
    monkeypatch.setattr(fsutil, "_temp_numbers", itertools.count(7))
    taken = tmp_path / f".report.md.{os.getpid()}-7.tmp"
    taken.write_text("someone else's")
    atomic_write_text(tmp_path / "report.md", "mine")
    assert (tmp_path / "report.md").read_text() == "mine"
    assert taken.read_text() == "someone else's" and _leftovers(tmp_path) == [taken.name]


def test_a_file_where_the_folder_should_be_is_an_error(tmp_path):
    (tmp_path / "doc").write_text("not a folder")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "doc" / "report.md", "x")


def test_writers_into_one_folder_never_clash(tmp_path):
    """Threads writing their own files and the same file into one folder at once: every file is
    whole, the shared one is one writer's complete text, and no temp file is left."""
    folder = tmp_path / "reports" / "doc"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                atomic_write_text(folder / f"w{n}-{i}.md", f"{n}:{i}" * 100, durable=False)
                atomic_write_text(folder / "shared.md", str(n) * 5000, durable=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all((folder / f"w{n}-{i}.md").read_text() == f"{n}:{i}" * 100 for n in range(8) for i in range(50))
    shared = (folder / "shared.md").read_text()
    assert len(shared) == 5000 and len(set(shared)) == 1
    assert _leftovers(folder) == []
