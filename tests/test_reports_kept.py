"""Every report a user paid for stays, findable, and summary.csv lists everything the data dir
holds: each document × prompt × model, in its latest state — also after the ledger is lost."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from flows.process import RunParameters, process_documents
from longbatch.ledger import SCHEMA_VERSION, Ledger
from tasks.reports import _shown_path
from test_flow import PROSE, api, fast_polling, write  # noqa: F401 - fixtures


def summary(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "reports" / "summary.csv")


def created(api) -> list[str]:  # noqa: ANN001
    return [cid for _, ids in api.sim.create_log for cid in ids]


def test_two_models_keep_both_reports_and_the_summary_points_at_each(data_dir, api):
    write(data_dir / "inbox", "a.txt", PROSE)
    sonnet = RunParameters(data_dir=str(data_dir), model="claude-sonnet-4-6", max_output_tokens=1_000)
    process_documents(sonnet)
    process_documents(RunParameters(data_dir=str(data_dir), model="claude-opus-4-6", max_output_tokens=1_000))
    sent = len(created(api))
    process_documents(sonnet)  # nothing new: nothing sent, and the summary still names both
    assert len(created(api)) == sent == 2
    frame = summary(data_dir)
    assert sorted(frame["model"]) == ["claude-opus-4-6", "claude-sonnet-4-6"]
    assert set(frame["status"]) == {"complete"}
    for _, row in frame.iterrows():
        meta = json.loads((data_dir / row["report"]).with_suffix(".json").read_text())
        assert meta["model"] == row["model"] and meta["cost_usd"] == row["cost_usd"]
        assert meta["batch_id"] == row["batch_id"]
    reports = sorted(p.relative_to(data_dir / "reports").as_posix()
                     for p in (data_dir / "reports").rglob("report.md"))
    assert len(reports) == 2 and {r.split("/")[1] for r in reports} == {"claude-opus-4-6", "claude-sonnet-4-6"}


def test_the_summary_keeps_earlier_prompts_and_drops_refusals_of_files_gone(data_dir, api):
    write(data_dir / "inbox", "a.txt", PROSE)
    write(data_dir / "inbox", "empty.txt", "")
    process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=1_000))
    (data_dir / "inbox" / "empty.txt").unlink()
    process_documents(RunParameters(data_dir=str(data_dir), prompts=["summary"], max_output_tokens=1_000))
    frame = summary(data_dir)
    rows = {(r["source"], r["prompt"]): r["status"] for _, r in frame.iterrows()}
    assert rows == {("a.txt", "report"): "complete", ("a.txt", "summary"): "complete"}


def test_a_deleted_ledger_does_not_resend_what_was_paid_for(data_dir, api, caplog):
    write(data_dir / "inbox", "a.txt", PROSE)
    write(data_dir / "inbox", "b.md", "# Notes\n\n" + PROSE)
    params = RunParameters(data_dir=str(data_dir), max_output_tokens=1_000)
    process_documents(params)
    before = summary(data_dir).set_index("source")
    for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
        (data_dir / name).unlink(missing_ok=True)
    write(data_dir / "inbox", "c.txt", "A new memo. " + PROSE)
    process_documents(params)
    assert [cid.split("-")[0] for cid in created(api)] == ["a", "b", "c"]  # only the new document went out
    after = summary(data_dir).set_index("source")
    assert set(after["status"]) == {"complete"}
    for source in ("a.txt", "b.md"):  # the same reports, batches and cost as before
        assert after.loc[source, ["report", "batch_id", "cost_usd"]].tolist() == \
            before.loc[source, ["report", "batch_id", "cost_usd"]].tolist()
    assert "had no record of the 2 report(s)" in caplog.text


def test_a_schema_4_ledger_migrates_its_plan_rows_and_gains_indexes(tmp_path):
    Ledger.for_data_dir(tmp_path).close()
    db = tmp_path / "ledger.sqlite"
    data = json.dumps({"doc_id": "a-1", "source": "a.txt", "kind": "text", "prompt": "report",
                       "model": "claude-sonnet-4-6", "status": "ready", "betas": ""})
    with sqlite3.connect(db) as conn:  # what schema 4 wrote: plan rows keyed by source and prompt only
        conn.execute("DROP TABLE plan_rows")
        conn.execute("CREATE TABLE plan_rows (source TEXT NOT NULL, prompt VARCHAR(64) NOT NULL, doc_id VARCHAR(64) "
                     "NOT NULL, sha256 VARCHAR(64), model VARCHAR(64), status VARCHAR(32) NOT NULL, reason TEXT, "
                     "fingerprint VARCHAR(64), data TEXT, planned_at FLOAT NOT NULL, PRIMARY KEY (source, prompt))")
        conn.execute("INSERT INTO plan_rows VALUES ('a.txt', 'report', 'a-1', '', 'claude-sonnet-4-6', 'ready', "
                     "NULL, 'f', ?, 1.0)", (data,))
        conn.execute("DROP INDEX ix_results_fingerprint")
        conn.execute("ALTER TABLE batches DROP COLUMN run_id")  # schema 6
        conn.execute("ALTER TABLE batches DROP COLUMN canceled_at")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN primer")  # schema 6
        conn.execute("ALTER TABLE requests DROP COLUMN max_cost_usd")  # schema 6
        conn.execute("DROP TABLE spend_reservations")  # schema 6
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    ledger = Ledger.for_data_dir(tmp_path)
    [record] = ledger.plan()
    assert (record.row.source, record.row.model, record.fingerprint) == ("a.txt", "claude-sonnet-4-6", "f")
    ledger.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"ix_results_fingerprint", "ix_requests_custom_id", "ix_requests_state"} <= indexes


@pytest.mark.parametrize("data_dir, recorded", [
    ("/srv/data", "/srv/data/reports/a/m/report.md"),
    ("data", "data/reports/a/m/report.md"),
    (".", "reports/a/m/report.md"),
    ("/", "/reports/a/m/report.md"),
    ("/srv/data", "/srv/database/reports/a/m/report.md"),  # a sibling whose name starts the same
    ("/srv/data", "/elsewhere/report.md"),
])
def test_the_summary_shows_a_report_path_as_pathlib_does(data_dir, recorded):
    path = Path(recorded)
    expected = path.relative_to(data_dir).as_posix() if path.is_relative_to(data_dir) else str(path)
    assert _shown_path(recorded, Path(data_dir)) == expected
