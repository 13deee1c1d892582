"""Bad values and bad places to write: one readable line and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from test_cli import run_cli

TEXT = "A plain document about the tides of the North Sea and the people who live by them. " * 40


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, and the user's message on one line naming what to fix."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    ours = [line for line in proc.stderr.splitlines() if line.startswith("longbatch:")]
    assert len(ours) == 1, proc.stderr
    for word in words:
        assert word in ours[0], ours[0]
    return ours[0]


@pytest.fixture
def inbox_dir(tmp_path) -> Path:
    (tmp_path / "data" / "inbox").mkdir(parents=True)
    (tmp_path / "data" / "inbox" / "tides.txt").write_text(TEXT)
    return tmp_path / "data"


@pytest.mark.parametrize("flags, flag", [
    (["--budget-usd", "-1"], "--budget-usd"),
    (["--max-attempts", "0"], "--max-attempts"),
    (["--max-output-tokens", "-5"], "--max-output-tokens"),
    (["--max-output-tokens", "0"], "--max-output-tokens"),  # was silently "the maximum"
    (["--min-output-tokens", "0"], "--min-output-tokens"),
    (["--min-output-tokens", "9000", "--max-output-tokens", "4000"], "--min-output-tokens (9,000) is above"),
])
def test_bad_values_are_one_line_naming_the_flag(inbox_dir, flags, flag):
    proc = run_cli("run", "--simulate", "--data-dir", str(inbox_dir), *flags)
    _one_line_error(proc, flag)
    assert not (inbox_dir / "ledger.sqlite").exists()  # refused before anything started


def test_a_small_maximum_alone_is_fine_the_default_minimum_yields(inbox_dir):
    proc = run_cli("plan", "--data-dir", str(inbox_dir), "--max-output-tokens", "2000")
    assert proc.returncode == 0, proc.stderr
    assert "ready" in proc.stdout


def test_an_unknown_placeholder_in_a_prompt_is_refused(inbox_dir, tmp_path):
    prompt = tmp_path / "brief.md"
    prompt.write_text("Summarise $document_nam (costs $5, written $$) in $pages pages.")
    proc = run_cli("run", "--simulate", "--data-dir", str(inbox_dir), "--prompt", str(prompt))
    _one_line_error(proc, "$document_nam", "$document_name")
    prompt.write_text("Summarise $document_name (costs $5, written $$) in ${pages} pages.")
    assert run_cli("plan", "--data-dir", str(inbox_dir), "--prompt", str(prompt)).returncode == 0


@pytest.mark.parametrize("command", ["run", "plan", "collect", "status", "usage"])
def test_a_data_dir_that_is_a_file(tmp_path, command):
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    args = [command, "--data-dir", str(path)] + (["--simulate"] if command in ("run", "collect") else [])
    _one_line_error(run_cli(*args), "is a file")


@pytest.mark.parametrize("command", ["run", "status", "usage", "collect"])
def test_a_damaged_ledger(inbox_dir, command):
    (inbox_dir / "ledger.sqlite").write_bytes(os.urandom(8192))
    args = [command, "--data-dir", str(inbox_dir)] + (["--simulate"] if command in ("run", "collect") else [])
    _one_line_error(run_cli(*args), "ledger", "damaged")


@contextlib.contextmanager
def _mounted(target: Path, *options: str):
    """A mount for the test's lifetime (root only: CI and the dev machines run as root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only or tiny file system")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_read_only_data_dir(inbox_dir, tmp_path):
    assert run_cli("run", "--simulate", "--data-dir", str(inbox_dir), "--max-output-tokens", "1000").returncode == 0
    with _mounted(tmp_path / "ro", "--bind", "-o", "ro", str(inbox_dir)) as ro:
        for command in (["run", "--simulate"], ["plan"], ["status"], ["usage"], ["collect", "--simulate"]):
            _one_line_error(run_cli(*command, "--data-dir", str(ro)), "data dir")


def test_a_full_disk(tmp_path, corpus):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "udhr.txt").write_bytes((corpus / "text" / "udhr_article1_multilingual.txt").read_bytes())
    with _mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=2m", "tmpfs") as small:
        args = ["run", "--simulate", "--data-dir", str(small), str(inbox), "--max-output-tokens", "1000"]
        assert run_cli(*args).returncode == 0
        with contextlib.suppress(OSError), (small / "filler").open("wb") as fh:
            while True:  # every last byte
                fh.write(b"\0" * 4096)
                fh.flush()
        (inbox / "tides.txt").write_text(TEXT)  # new work: the ledger must grow
        _one_line_error(run_cli(*args), "full", "Free some space")
