"""The hostile inbox: odd names, a FIFO, a socket, links in and out, a decompression bomb, a
circular page tree and a 3 GB sparse file. The run goes to the end with a row per entry, and
nothing outside the inbox is read and nothing outside the data dir is written."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

from conftest import cli_env, longbatch_cmd
from hostile import SECRET, make_hostile_inbox
from tasks.ingest import display_name


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    """Every entry below `root` (links not followed), with its size and mtime."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(top, name))
            out[os.path.relpath(os.path.join(top, name), root)] = (st.st_size, st.st_mtime)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_hostile_inbox_runs_to_the_end_with_a_row_per_entry(tmp_path):
    data, outside, cwd = tmp_path / "data", tmp_path / "outside", tmp_path / "cwd"
    cwd.mkdir()
    names, secret = make_hostile_inbox(data / "inbox", outside)
    outside_before, secret_atime = _tree(outside), os.stat(secret).st_atime

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*longbatch_cmd(), *args, "--data-dir", str(data)], capture_output=True, text=True,
                              timeout=600, env=cli_env(LONGBATCH_SIM_OUTPUT_TOKENS="300"), cwd=cwd)

    plan = cli("plan")
    assert plan.returncode == 0, plan.stderr
    run = cli("run", "--simulate")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr

    shown = sorted(display_name(os.fsdecode(n)) for n in names)
    for table in (data / "plan.csv", data / "reports" / "summary.csv"):
        rows = _rows(table)
        assert sorted(r["source"] for r in rows) == shown, table  # one row per entry, none split in two
    by_source = {r["source"]: r for r in _rows(data / "reports" / "summary.csv")}
    expected = {
        "plain.txt": "duplicate", "link_in.txt": "complete",  # the same content once
        "bad_\\xff\\xfe.txt": "complete", "carriage\\rreturn.txt": "complete", "new\\nline.md": "complete",
        "tab\\tand \\x1b[31mescape.txt": "complete",
        "a_fifo.txt": "not_a_regular_file", "a_socket.txt": "not_a_regular_file",
        "link_out.txt": "link_outside_inbox", "dotdot_passwd.txt": "link_outside_inbox",
        "folder_out": "link_outside_inbox", "loop": "link_to_folder", "broken_link.txt": "broken_link",
        # The bomb's 400 MB of spaces: PDFium inflates it and finds no text (pypdf stopped at its
        # 75 MB limit and called it corrupt); either way a refusal of its own, and the run goes on.
        "sparse_3gb.txt": "too_large", "bomb.pdf": ("corrupt", "no_text"), "circular_pages.pdf": "corrupt",
    }
    for source, outcome in expected.items():
        row = by_source[source]
        if outcome in ("complete", "duplicate"):
            assert row["status"] == outcome, row
        else:
            categories = outcome if isinstance(outcome, tuple) else (outcome,)
            assert row["status"] == "error" and row["reason"].split(": ", 1)[0] in categories, row
        if outcome == "complete":
            report = data / row["report"]
            assert report.resolve().is_relative_to(data.resolve()) and report.is_file()

    # Nothing outside the inbox was read or sent, nothing outside the data dir was written.
    assert os.stat(secret).st_atime == secret_atime
    assert _tree(outside) == outside_before
    assert list(cwd.iterdir()) == []
    for top, _, files in os.walk(data):
        for name in files:
            path = Path(top, name)
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50 * 2**20:
                assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in run.stdout + run.stderr
