"""The `longbatch` command as a user runs it: subprocesses, exit codes, what is printed and written."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import cli_env, longbatch_cmd

SECRET = "sk-ant-api03-SECRET-must-never-be-written-0123456789"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*longbatch_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env())


def test_run_without_key_or_simulate_stops_and_creates_nothing(tmp_path):
    data_dir = tmp_path / "fresh"
    proc = run_cli("run", "--data-dir", str(data_dir))
    assert proc.returncode == 2
    assert "ANTHROPIC_API_KEY" in proc.stderr and "--simulate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize("command", ["run", "plan", "collect", "status", "usage", "simulator", "cancel"])
def test_help_explains_each_command(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and "usage: longbatch" in proc.stdout and len(proc.stdout) > 200


def test_unknown_model_is_a_clear_error(tmp_path):
    (tmp_path / "inbox").mkdir()
    proc = run_cli("run", "--simulate", "--data-dir", str(tmp_path), "--model", "claude-opus-99")
    assert proc.returncode == 2 and "claude-opus-4-6" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_shows_numbers_and_sends_nothing(tmp_path, corpus):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", inbox)
    shutil.copy(corpus / "pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf", inbox)
    # No key, no simulator, no network: plan needs none of them.
    proc = run_cli("plan", "--data-dir", str(tmp_path), "--model", "claude-opus-4-6")
    assert proc.returncode == 0, proc.stderr
    assert "paper_tracemonkey_pldi2009_14p.pdf" in proc.stdout and "300000" in proc.stdout
    assert "needs a password" in proc.stdout
    plan = pd.read_csv(tmp_path / "plan.csv")
    ready = plan[plan["status"] == "ready"].iloc[0]
    assert ready["granted_max_tokens"] == 300_000 and ready["pages"] == 14 and ready["max_cost_usd"] > 0
    assert not (tmp_path / "ledger.sqlite").exists()


def test_plan_without_a_key_imports_neither_the_sdk_nor_prefect(tmp_path, corpus):
    """An unchanged inbox is re-planned by hashing (the ingest cache); the SDK and Prefect would
    cost more than that to import, and `plan` with no key needs neither."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", inbox)
    shutil.copy(corpus / "text/udhr_article1_multilingual.txt", inbox)
    code = ("import sys; from flows.cli import main; code = main(['plan', '--data-dir', sys.argv[1]]); "
            "print(sorted(m for m in ('anthropic', 'prefect') if m in sys.modules)); sys.exit(code)")
    for _ in range(2):  # the first plan and the re-plan through the cache
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                              timeout=240, env=cli_env())
        assert proc.returncode == 0, proc.stderr
        assert "paper_tracemonkey_pldi2009_14p.pdf" in proc.stdout
        assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_run_s_modules_leave_pandas_for_the_summary():
    """pandas (~0.4-0.8 s to import) is needed only for the summary, which the wait imports it
    ahead of: importing the flow and everything it reads with must not import it."""
    code = ("import sys, flows.process, flows.artifacts, tasks.reports, longbatch.prefect_server; "
            "print('pandas' in sys.modules, 'prefect' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_run_against_a_standalone_simulator_like_the_real_api(tmp_path, corpus, standalone_simulator):
    url, state = standalone_simulator
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    shutil.copy(corpus / "text/sec_10k_apple.md", data_dir / "inbox")
    shutil.copy(corpus / "pdf/broken_truncated_60pct_nist_sp800-223.pdf", data_dir / "inbox")
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=SECRET, LONGBATCH_POLL_INITIAL_SECONDS="0.2",
                  PREFECT_LOGGING_LEVEL="DEBUG")
    proc = run_cli("run", "--data-dir", str(data_dir), "--max-output-tokens", "4000", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 complete" in proc.stdout and "1 error" in proc.stdout
    # The failed document's row has no output tokens: a dash, as for its cost, never pandas' <NA>.
    failed_row = next(line for line in proc.stdout.splitlines() if "broken_truncated" in line)
    assert failed_row.split()[2:5] == ["error", "-", "-"] and "<NA>" not in proc.stdout
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert sorted(summary["status"]) == ["complete", "error"]
    assert len(list(state.glob("msgbatch_*.json"))) == 1  # the simulator's own record: one create

    status = run_cli("status", "--data-dir", str(data_dir), env=env)
    assert status.returncode == 0 and "No pending batches" in status.stdout and "1 succeeded" in status.stdout
    usage = run_cli("usage", "--data-dir", str(data_dir), env=env)
    assert usage.returncode == 0 and "claude-sonnet-4-6" in usage.stdout and "Total: $" in usage.stdout

    # The key appears nowhere: not in any file under the data dir, not in any output.
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for output in (proc.stdout, proc.stderr, status.stdout, usage.stdout):
        assert SECRET not in output
    # Nor in any log line or parameter the Prefect server recorded for the run.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as prefect_client:
        logs = []
        while batch := prefect_client.read_logs(limit=200, offset=len(logs)):
            logs.extend(batch)
        runs = prefect_client.read_flow_runs(limit=200, sort=FlowRunSort.ID_DESC)
    assert any("msgbatch_" in log.message for log in logs)  # the run's own lines are there
    assert not any(SECRET in log.message for log in logs)
    assert not any(SECRET in str(run.parameters) for run in runs)


def test_no_wait_then_collect_from_the_cli(tmp_path, standalone_simulator):
    url, _ = standalone_simulator
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    (data_dir / "inbox" / "memo.txt").write_text("The plan was approved by the board on Monday. " * 40)
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=SECRET, LONGBATCH_POLL_INITIAL_SECONDS="0.2")
    proc = run_cli("run", "--no-wait", "--data-dir", str(data_dir), env=env)
    assert proc.returncode == 0 and "longbatch collect" in proc.stdout
    status = run_cli("status", "--data-dir", str(data_dir), env=env)
    assert "msgbatch_" in status.stdout and "1 request(s)" in status.stdout
    time.sleep(0.6)
    collected = run_cli("collect", "--data-dir", str(data_dir), env=env)
    assert collected.returncode == 0, collected.stderr[-2000:]
    assert "1 complete" in collected.stdout
    assert list((data_dir / "reports").glob("memo-*/*/report.md"))


def test_plan_counts_near_limit_documents_exactly_with_simulate(tmp_path, corpus):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(corpus / "text/hongloumeng_dream_of_the_red_chamber_GB18030.txt", inbox / "hlm.txt")
    offline = run_cli("plan", "--data-dir", str(tmp_path))
    assert offline.returncode == 0 and "does_not_fit" in offline.stdout and "exact count" in offline.stdout
    counted = run_cli("plan", "--data-dir", str(tmp_path), "--simulate")
    assert counted.returncode == 0, counted.stderr[-2000:]
    row = pd.read_csv(tmp_path / "plan.csv").iloc[0]
    assert row["status"] == "ready" and 800_000 < row["exact_input_tokens"] < 1_000_000
    assert not (tmp_path / "simulator").exists() and not (tmp_path / "ledger.sqlite").exists()
    no_key = run_cli("plan", "--data-dir", str(tmp_path), "--exact-count")
    assert no_key.returncode == 2 and "ANTHROPIC_API_KEY" in no_key.stderr


def test_budget_refusal_is_one_clear_line_and_sends_nothing(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "memo.txt").write_text("The board met and agreed the plan in full. " * 200)
    proc = run_cli("run", "--simulate", "--data-dir", str(tmp_path), "--budget-usd", "0.001")
    assert proc.returncode == 2
    assert "over the budget" in proc.stderr and "Nothing was sent" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "simulator").glob("msgbatch_*.json"))


def test_a_big_inbox_prints_the_rows_to_look_at_and_the_counts_not_every_row(tmp_path, corpus):
    """Past SUMMARY_ROWS_PRINTED rows the terminal gets the documents that are not complete and
    the counts; summary.csv keeps every row. (10,000 documents printed 10,000 lines.)"""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(57):
        (inbox / f"minutes-{i:02d}.txt").write_text(f"Minutes of meeting {i}: the board approved item {i * 3}.\n")
    (inbox / "empty.txt").write_text("")
    shutil.copy(corpus / "pdf/broken_truncated_60pct_nist_sp800-223.pdf", inbox)
    proc = run_cli("run", "--simulate", "--data-dir", str(tmp_path), "--max-output-tokens", "2000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "59 rows; the 2 not complete:" in lines
    table = lines[lines.index("59 rows; the 2 not complete:") + 1:]
    rows = [line for line in table if line.strip() and not line.lstrip().startswith("source")]
    assert [r.split()[0] for r in rows[:2]] == ["broken_truncated_60pct_nist_sp800-223.pdf", "empty.txt"]
    assert not any("minutes-" in line for line in lines)  # the complete ones are in the table only
    assert "57 complete, 2 error." in proc.stdout
    summary = pd.read_csv(tmp_path / "reports" / "summary.csv")
    assert len(summary) == 59 and (summary["status"] == "complete").sum() == 57


def test_a_big_plan_prints_what_is_not_sent_and_what_may_cost_the_most_not_every_row(tmp_path, corpus):
    """`plan` past SUMMARY_ROWS_PRINTED rows: the rows not sent, the ten that may cost the most,
    the totals; plan.csv keeps every row with its cost."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(57):  # the later, the longer: minutes-56 may cost the most
        (inbox / f"minutes-{i:02d}.txt").write_text(f"Minutes of meeting {i}. " + "The board approved it. " * i)
    (inbox / "empty.txt").write_text("")
    shutil.copy(corpus / "pdf/broken_truncated_60pct_nist_sp800-223.pdf", inbox)
    proc = run_cli("plan", "--data-dir", str(tmp_path), "--max-output-tokens", "2000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"59 rows (every one in {tmp_path / 'plan.csv'}); the 2 not sent:"
    assert [line.split()[0] for line in lines[2:4]] == ["broken_truncated_60pct_nist_sp800-223.pdf", "empty.txt"]
    dearest = lines[lines.index("The 10 that may cost the most:") + 2:][:10]
    assert [line.split()[0] for line in dearest] == [f"minutes-{i:02d}.txt" for i in range(56, 46, -1)]
    assert not any(line.startswith("minutes-00.txt") for line in lines)
    assert "57 request(s) in 1 batch(es)" in proc.stdout
    plan = pd.read_csv(tmp_path / "plan.csv")
    assert len(plan) == 59 and plan["max_cost_usd"].notna().all()


@pytest.mark.parametrize("sent", [3, 0])
def test_a_big_plan_of_mostly_unsendable_rows_names_only_sent_ones_as_dearest(tmp_path, sent):
    # Fewer than ten rows that are sent: those alone may cost the most, never an empty file.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(55):
        (inbox / f"empty-{i:02d}.txt").write_text("")
    for i in range(sent):
        (inbox / f"minutes-{i}.txt").write_text(f"Minutes of meeting {i}. " + "The board approved it. " * 20)
    proc = run_cli("plan", "--data-dir", str(tmp_path), "--max-output-tokens", "2000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{55 + sent} rows (every one in {tmp_path / 'plan.csv'}); the first 50 not sent:"
    if sent:
        dearest = lines[lines.index(f"The {sent} that may cost the most:") + 2:][:sent]
        assert sorted(line.split()[0] for line in dearest) == [f"minutes-{i}.txt" for i in range(sent)]
    else:
        assert not any("may cost the most" in line for line in lines)
    assert "Notes:" in lines and sum(line.startswith("  empty-") for line in lines) == 50


def test_a_big_plan_with_every_row_sendable_says_so(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(52):
        (inbox / f"minutes-{i:02d}.txt").write_text(f"Minutes of meeting {i}. " + "The board approved it. " * i)
    proc = run_cli("plan", "--data-dir", str(tmp_path), "--max-output-tokens", "2000")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"52 rows (every one in {tmp_path / 'plan.csv'}); every one is ready to send."
    assert lines[lines.index("The 10 that may cost the most:") + 2].split()[0] == "minutes-51.txt"
