"""`longbatch cancel`: canceled work is recorded as the user's and never resent unasked; what
finished before the cancel is kept; `--resend-canceled` sends the rest once. Schema 6."""

from __future__ import annotations

import json
import sqlite3
import time

import pandas as pd
import pytest

from conftest import cli_env, longbatch_cmd
from flows.cancel import cancel_in_flight
from flows.process import RunParameters, collect_batches, process_documents
from longbatch.errors import ConfigError
from longbatch.ledger import SCHEMA_VERSION, Ledger
from longbatch.records import CANCELED_BY_USER, BatchState, RequestState
from simulator.engine import SimConfig
from simulator.server import SimulatorServer

PROSE = "The committee reviewed the annual accounts in detail. Each member signed the minutes. " * 30


@pytest.fixture
def slow_api(monkeypatch):
    """The API as a simulator whose batch of four takes 8 s: request i ends at 2 s x (i + 1)."""
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    with SimulatorServer(SimConfig(processing_seconds=8.0, output_tokens=200)) as sim:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
        yield sim


def test_cancel_keeps_what_finished_and_never_resends_the_rest_unasked(data_dir, slow_api):
    for i in range(4):
        (data_dir / "inbox" / f"memo{i}.txt").write_text(f"Memo {i}. " + PROSE)
    process_documents(RunParameters(data_dir=str(data_dir), wait=False, max_output_tokens=1_000))
    ledger = Ledger.for_data_dir(data_dir)
    [batch] = ledger.batches_in_state(BatchState.SUBMITTED)
    time.sleep(max(0.0, batch.created_at + 5.0 - time.time()))  # two of the four have finished
    import anthropic

    client = anthropic.Anthropic(api_key="k", base_url=slow_api.url)
    outcome = cancel_in_flight(client, ledger, [batch.api_id], everything=False)
    assert outcome.canceled == [batch.api_id] and not outcome.failed
    assert ledger.canceled_batches() == {batch.id}
    collect_batches(data_dir=str(data_dir), wait=True)
    states = [r.state for r in ledger.requests_in_state(*RequestState)]
    assert sorted(states) == ["failed", "failed", "succeeded", "succeeded"]
    canceled = ledger.requests_in_state(RequestState.FAILED)
    assert {r.error_type for r in canceled} == {CANCELED_BY_USER}
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert sorted(summary["status"]) == ["canceled", "canceled", "complete", "complete"]
    assert summary[summary["status"] == "canceled"]["reason"].str.startswith("canceled by user").all()
    assert len(list((data_dir / "reports").rglob("report.md"))) == 2  # what finished is kept
    # Neither another collect nor the next run sends them again ...
    collect_batches(data_dir=str(data_dir), wait=True)
    process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=1_000))
    assert len(slow_api.sim.create_log) == 1
    # ... unless asked, and then once.
    collect_batches(data_dir=str(data_dir), wait=True, resend_canceled=True)
    collect_batches(data_dir=str(data_dir), wait=True, resend_canceled=True)
    assert len(slow_api.sim.create_log) == 2
    assert sorted(slow_api.sim.create_log[1][1]) == sorted(r.custom_id for r in canceled)
    assert sorted(r.state for r in ledger.requests_in_state(*RequestState)) == ["succeeded"] * 4
    ledger.close()


def test_cancel_refuses_what_is_not_in_flight(tmp_path, client):
    ledger = Ledger.for_data_dir(tmp_path)
    with pytest.raises(ConfigError, match="--all"):
        cancel_in_flight(client, ledger, [], everything=False)
    with pytest.raises(ConfigError, match="msgbatch_nope"):
        cancel_in_flight(client, ledger, ["msgbatch_nope"], everything=False)
    assert cancel_in_flight(client, ledger, [], everything=True).lines() == ["No batch in flight: nothing to cancel."]


def test_no_wait_cancel_collect_from_the_cli_cancels_every_request_and_creates_none_again(tmp_path):
    """The issue's check: `run --no-wait`, `cancel --all`, `collect --wait`."""
    import subprocess

    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    for i in range(3):
        (data_dir / "inbox" / f"memo{i}.txt").write_text(f"Memo {i}. " + PROSE)
    env = cli_env(LONGBATCH_SIM_PROCESSING_SECONDS="600", LONGBATCH_POLL_INITIAL_SECONDS="0.2")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*longbatch_cmd(), *args, "--data-dir", str(data_dir)], capture_output=True,
                              text=True, timeout=300, env=env)

    assert cli("run", "--no-wait", "--simulate", "--prompt", "report", "--prompt", "summary").returncode == 0
    cancel = cli("cancel", "--all", "--simulate")
    assert cancel.returncode == 0 and "canceled msgbatch_" in cancel.stdout, cancel.stderr[-2000:]
    collect = cli("collect", "--wait", "--simulate")
    assert collect.returncode == 0, collect.stderr[-2000:]
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert len(summary) == 6 and (summary["status"] == "canceled").all()
    created = [json.loads(p.read_text()) for p in (data_dir / "simulator").glob("msgbatch_*.json")]
    assert len(created) == 1 and len(created[0]["custom_ids"]) == 6  # one batch, never created again
    assert cli("collect", "--wait", "--simulate").returncode == 0
    assert len(list((data_dir / "simulator").glob("msgbatch_*.json"))) == 1


def test_a_schema_6_ledger_migrates_to_7(tmp_path):
    Ledger.for_data_dir(tmp_path).close()
    db = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db) as conn:  # what schema 6 wrote: no run_id, no canceled_at
        conn.execute("ALTER TABLE batches DROP COLUMN run_id")
        conn.execute("ALTER TABLE batches DROP COLUMN canceled_at")
        conn.execute("ALTER TABLE requests DROP COLUMN primer")  # schema 7
        conn.execute("ALTER TABLE requests DROP COLUMN max_cost_usd")  # schema 7
        conn.execute("DROP TABLE spend_reservations")  # schema 7
        conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
        conn.execute("INSERT INTO batches (id, api_id, state, betas, request_count, intent_at) "
                     "VALUES ('lb_old', 'msgbatch_old', 'submitted', '', 3, 1.0)")
    ledger = Ledger.for_data_dir(tmp_path)
    [old] = ledger.batches_in_state(BatchState.SUBMITTED)
    assert old.api_id == "msgbatch_old" and ledger.canceled_batches() == set()
    ledger.record_cancel("lb_old")
    assert ledger.canceled_batches() == {"lb_old"}
    from longbatch.records import NewRequest

    new = NewRequest("r" * 64, "d--summary", "d", "a.txt", "0" * 64, "summary", "claude-sonnet-4-6", 10, ())
    assert ledger.claim(new, primer="p" * 64, max_cost_usd=1.5)  # the new request columns exist
    assert ledger.request("r" * 64).primer == "p" * 64
    rid, _ = ledger.reserve_spend(lambda state: (1.0, None))  # and the reservations table
    ledger.release_spend(rid)
    ledger.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert SCHEMA_VERSION == 7
