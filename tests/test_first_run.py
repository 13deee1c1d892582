"""What a new user sees on a first and second run: the small things that must be right."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anthropic
import pytest

from conftest import REPO
from simulator.engine import SimConfig
from simulator.server import SimulatorServer
from tasks.plan import FAILED, NOT_FIT, READY, Plan, PlanRow
from test_cli import run_cli
from test_simulator import params, run_batch

TEXT = "The harbour board met on Tuesday. It approved the new pier and a budget of two million. " * 60


@pytest.fixture
def finished_run(tmp_path) -> tuple[Path, str]:
    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    (data / "inbox" / "minutes.txt").write_text(TEXT)
    proc = run_cli("run", "--simulate", "--data-dir", str(data), "--max-output-tokens", "1000")
    assert proc.returncode == 0, proc.stderr
    # Prefect's queued log lines reach the temporary server before it stops (no noise at the end).
    assert "Error logging to API" not in proc.stdout + proc.stderr
    return data, proc.stdout


def test_a_second_run_says_it_has_nothing_new_to_send(finished_run):
    data, first = finished_run
    assert "Nothing new to send" not in first
    again = run_cli("run", "--simulate", "--data-dir", str(data), "--max-output-tokens", "1000")
    assert again.returncode == 0 and "Nothing new to send" in again.stdout
    (data / "inbox" / "more.txt").write_text(TEXT.replace("pier", "lighthouse"))
    third = run_cli("run", "--simulate", "--data-dir", str(data), "--max-output-tokens", "1000")
    assert third.returncode == 0 and "Nothing new to send" not in third.stdout


def test_collect_with_nothing_pending_says_so_without_a_key(finished_run, tmp_path):
    data, _ = finished_run
    for folder in (data, tmp_path / "never-used"):
        start = time.monotonic()
        proc = run_cli("collect", "--data-dir", str(folder))  # no key, no --simulate
        assert proc.returncode == 0, proc.stderr
        assert "Nothing pending" in proc.stdout and "ANTHROPIC_API_KEY" not in proc.stderr
        assert time.monotonic() - start < 60  # no Prefect flow run


def test_the_readme_table_names_every_entry_a_run_leaves_in_the_data_dir(finished_run):
    data, _ = finished_run
    table = (REPO / "README.md").read_text().split("## The data directory", 1)[1].split("\n## ", 1)[0]
    documented = {m.split("/")[0] for m in re.findall(r"^\| `([^`]+)`", table, re.M)}
    present = {p.name for p in data.iterdir() if not p.name.startswith(".")} - {"ledger.sqlite-wal", "ledger.sqlite-shm"}
    assert present - documented == set()  # simulator/ was missing


@pytest.mark.parametrize("command, words", [("status", "Reads the ledger only"), ("usage", "succeeded request")])
def test_status_and_usage_explain_themselves(command, words):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and words in proc.stdout


def test_the_plan_estimate_counts_only_what_is_sent():
    def row(status: str, usd: float) -> PlanRow:
        return PlanRow("d", "d.txt", "text", "report", "claude-sonnet-4-6", status, est_input_usd=usd)

    plan = Plan("claude-sonnet-4-6", (row(READY, 0.5), row(NOT_FIT, 2.0), row(FAILED, 0.0)), ())
    assert plan.est_input_usd == 0.5


def test_long_reasons_are_cut_with_an_ellipsis(tmp_path):
    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    (data / "inbox" / "notes.docx").write_bytes(b"PK\x03\x04 not a supported type")
    proc = run_cli("run", "--simulate", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if "notes.docx" in ln]
    assert line.rstrip().endswith("…")


def _simulated(text: str, output_tokens: int, max_tokens: int = 10_000):
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=output_tokens)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        _, out = run_batch(client, [{"custom_id": "r", "params": params(text=text, max_tokens=max_tokens)}])
    return out["r"]


@pytest.mark.parametrize("output_tokens", [300, 777, 1500])
def test_a_simulated_report_that_ends_on_its_own_ends_whole(output_tokens):
    body = "\n".join(f"--- Page {i} ---\n" + f"Clause {i} sets a duty for the seller in every case. " * 30
                     for i in range(1, 60))
    out = _simulated(f'<document name="sale_contract.pdf" pages="59">\n{body}\n</document>\nReport.', output_tokens)
    assert out.stop_reason == "end_turn"
    assert out.text.startswith("# Report on sale_contract.pdf\n")  # the title names the document
    lines = out.text.rstrip("\n").split("\n")
    assert lines[-1] == "## End of outline"  # never cut mid-list
    items = [ln for ln in lines if ln.startswith("- ")]
    assert items and all(ln.endswith(".") for ln in items)
    assert out.output_tokens <= output_tokens


def test_a_report_cut_by_max_tokens_is_still_cut():
    body = "Clause 1 sets a duty for the seller in every case. " * 3000
    out = _simulated(f'<document name="long.txt">\n{body}\n</document>', 5_000, max_tokens=400)
    assert out.stop_reason == "max_tokens" and not out.text.rstrip().endswith("End of outline")

