"""The main job end to end: real Prefect flow runs, the real SDK over HTTP, the simulator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.process import RunParameters, collect_batches, process_documents
from longbatch.errors import BudgetExceededError
from longbatch.ledger import Ledger
from longbatch.settings import Settings


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    monkeypatch.setenv("LONGBATCH_SIM_PROCESSING_SECONDS", "0.3")  # for --simulate runs
    monkeypatch.setenv("LONGBATCH_SIM_OUTPUT_TOKENS", "600")


@pytest.fixture(autouse=True)
def shared_ledger(ledger_url, monkeypatch):
    """Every test here runs twice: on each data dir's own SQLite ledger, then with every data dir
    of the test on one PostgreSQL database (each in its own scope)."""
    if ledger_url:
        monkeypatch.setenv("LONGBATCH_DATABASE_URL", ledger_url)
    return ledger_url


def open_ledger(data_dir: Path) -> Ledger:
    """The ledger a run on `data_dir` uses (SQLite there, or the shared database)."""
    return Ledger.open(Settings.given(data_dir=data_dir))


@pytest.fixture
def api(sim, monkeypatch):
    """Point the run at an external simulator as if it were the real API (no --simulate)."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    return sim


def write(inbox: Path, name: str, text: str) -> None:
    (inbox / name).parent.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_text(text, encoding="utf-8")


PROSE = "The committee reviewed the annual accounts in detail. Each member signed the minutes. " * 30


def mixed_inbox(inbox: Path, corpus: Path) -> None:
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", inbox / "tracemonkey.pdf")
    shutil.copy(corpus / "text/sec_10k_apple.md", inbox / "apple.md")
    shutil.copy(corpus / "pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf", inbox / "locked.pdf")
    shutil.copy(corpus / "pdf/scanned_multipage_mixed_ocrmypdf_6p.pdf", inbox / "scan.pdf")
    shutil.copy(corpus / "pdf/broken_header_and_eof_only_44bytes.pdf", inbox / "nested/broken.pdf")  \
        if (inbox / "nested").mkdir() is None else None
    write(inbox, "refuse.txt", PROSE + "[[simulate:refusal]]")
    write(inbox, "long-answer.txt", PROSE * 10 + "[[simulate:output_tokens=5000]]")
    write(inbox, "bad-request.txt", PROSE + "[[simulate:error=invalid_request_error]]")
    write(inbox, "always-expires.txt", PROSE + "[[simulate:expired]]")


def read_summary(data_dir: Path) -> dict[str, dict]:
    frame = pd.read_csv(data_dir / "reports" / "summary.csv")
    return {row["source"]: row for row in frame.to_dict("records")}


def test_end_to_end_every_outcome(data_dir, corpus, api):
    mixed_inbox(data_dir / "inbox", corpus)
    result = process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000, max_attempts=2))
    rows = read_summary(data_dir)
    assert result["rows"] == len(rows) == 9
    status = {k: v["status"] for k, v in rows.items()}
    assert status == {
        "tracemonkey.pdf": "complete", "apple.md": "complete", "locked.pdf": "error", "scan.pdf": "error",
        "nested/broken.pdf": "error", "refuse.txt": "refused", "long-answer.txt": "truncated",
        "bad-request.txt": "failed", "always-expires.txt": "failed",
    }
    assert "password" in rows["locked.pdf"]["reason"]
    assert "OCR" in rows["scan.pdf"]["reason"]
    assert "damaged" in rows["nested/broken.pdf"]["reason"]
    assert "invalid_request_error" in rows["bad-request.txt"]["reason"]
    assert "gave up after 2 attempts" in rows["always-expires.txt"]["reason"]
    assert rows["always-expires.txt"]["attempts"] == 2 and rows["bad-request.txt"]["attempts"] == 1

    md = (data_dir / rows["tracemonkey.pdf"]["report"]).read_text()
    assert "Simulated report" in md and "## Page 1" in md
    meta = json.loads((data_dir / rows["tracemonkey.pdf"]["report"]).with_suffix(".json").read_text())
    for key in ("model", "batch_id", "custom_id", "usage", "stop_reason", "truncated", "source_sha256", "timings",
                "cost_usd", "attempt"):
        assert key in meta
    assert meta["truncated"] is False and meta["usage"]["output_tokens"] > 0 and meta["cost_usd"] > 0
    assert meta["batch_id"].startswith("msgbatch_")

    truncated = (data_dir / rows["long-answer.txt"]["report"]).read_text()
    assert truncated.startswith("> **Incomplete report.**")
    assert json.loads((data_dir / rows["long-answer.txt"]["report"]).with_suffix(".json").read_text())["truncated"]
    assert (data_dir / rows["refuse.txt"]["report"]).read_text().startswith("> **Refused.**")
    assert rows["long-answer.txt"]["output_tokens"] <= 2_000

    archives = list((data_dir / "results").glob("*.jsonl"))
    assert len(archives) == 2  # the first batch and one retry of the expired request
    assert not list(data_dir.rglob("*.tmp")) and not list(data_dir.rglob("*.part"))
    # Each request's attempts were separate creates of distinct work: nothing sent twice at once.
    sent = [cid for _, ids in api.sim.create_log for cid in ids]
    assert sent.count(next(c for c in sent if "always-expires" in c)) == 2
    assert len(sent) - 1 == len(set(sent))


def test_rerun_sends_nothing_new_and_a_changed_document_is_resent(data_dir, api):
    inbox = data_dir / "inbox"
    write(inbox, "a.txt", PROSE)
    write(inbox, "b.md", "# Title\n\n" + PROSE)
    params = RunParameters(data_dir=str(data_dir), max_output_tokens=2_000)
    process_documents(params)
    assert len(api.sim.create_log) == 1
    report_a = next((data_dir / "reports").glob("a-*/claude-sonnet-4-6/report.md"))
    first_text = report_a.read_text()

    process_documents(params)
    assert len(api.sim.create_log) == 1, "an unchanged inbox must not be submitted again"
    assert report_a.read_text() == first_text

    write(inbox, "b.md", "# Title\n\nA new paragraph about the merger. " + PROSE)
    process_documents(params)
    assert len(api.sim.create_log) == 2
    assert len(api.sim.create_log[1][1]) == 1 and api.sim.create_log[1][1][0].startswith("b-")
    assert set(read_summary(data_dir)) == {"a.txt", "b.md"}


def test_no_wait_then_collect_gives_the_same_reports(tmp_path, api):
    texts = {"one.txt": PROSE, "two.md": "# Heading\n\n" + PROSE.replace("committee", "board")}
    dirs = {}
    for mode in ("wait", "nowait"):
        d = tmp_path / mode
        for name, text in texts.items():
            write(d / "inbox", name, text)
        dirs[mode] = d
    process_documents(RunParameters(data_dir=str(dirs["wait"]), max_output_tokens=2_000))
    process_documents(RunParameters(data_dir=str(dirs["nowait"]), max_output_tokens=2_000, wait=False))
    assert read_summary(dirs["nowait"])["one.txt"]["status"] == "pending"
    assert not list((dirs["nowait"] / "reports").glob("*/*/*.md"))
    collect_batches(data_dir=str(dirs["nowait"]), wait=True)

    def reports(d: Path) -> dict[str, str]:
        return {p.relative_to(d).as_posix(): p.read_text() for p in sorted((d / "reports").glob("*/*/*.md"))}

    assert reports(dirs["wait"]) == reports(dirs["nowait"]) and len(reports(dirs["wait"])) == 2
    assert {r["status"] for r in read_summary(dirs["nowait"]).values()} == {"complete"}


def test_budget_refuses_before_sending(data_dir, api):
    write(data_dir / "inbox", "a.txt", PROSE)
    with pytest.raises(BudgetExceededError, match="Nothing was sent"):
        process_documents(RunParameters(data_dir=str(data_dir), budget_usd=0.001))
    assert api.sim.create_log == []


def test_two_prompts_two_reports_per_document(data_dir, api):
    write(data_dir / "inbox", "a.txt", PROSE)
    process_documents(RunParameters(data_dir=str(data_dir), prompts=["report", "summary"], max_output_tokens=1_000))
    folder = next((data_dir / "reports").glob("a-*/claude-sonnet-4-6"))
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "report.md", "summary.json", "summary.md"]
    frame = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert sorted(frame["prompt"]) == ["report", "summary"]


def test_document_too_long_for_the_window_is_split_not_refused(data_dir, corpus, api):
    shutil.copy(corpus / "text/king_james_bible_full.txt", data_dir / "inbox" / "kjv.txt")
    write(data_dir / "inbox", "small.txt", PROSE)
    process_documents(RunParameters(data_dir=str(data_dir)))
    rows = read_summary(data_dir)
    assert rows["kjv.txt"]["status"] == "complete" and rows["kjv.txt"]["est_input_tokens"] > 1_000_000
    assert rows["kjv.txt"]["parts"] >= 2
    assert rows["small.txt"]["status"] == "complete" and pd.isna(rows["small.txt"]["parts"])
    sent = [cid for _, ids in api.sim.create_log for cid in ids]
    kjv = [c for c in sent if c.startswith("kjv")]
    base = f"{rows['kjv.txt']['doc_id']}--report"
    parts = int(rows["kjv.txt"]["parts"])
    assert sorted(kjv) == sorted([f"{base}-p{i}" for i in range(1, parts + 1)] + [f"{base}-f"])


def test_simulate_mode_runs_without_a_key(data_dir, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    write(data_dir / "inbox", "a.txt", PROSE)
    result = process_documents(RunParameters(data_dir=str(data_dir), simulate=True, max_output_tokens=1_000))
    assert result["by_status"] == {"complete": 1}
    assert (data_dir / "simulator").is_dir()


def test_empty_inbox_writes_an_empty_summary(data_dir, api):
    result = process_documents(RunParameters(data_dir=str(data_dir)))
    assert result["rows"] == 0 and api.sim.create_log == []
    assert (data_dir / "reports" / "summary.csv").exists()


def test_a_final_state_handed_back_without_its_data_still_leads_the_cli_to_the_summary(data_dir, api):
    """Seen once in the suite under load: after the run had written everything, the Prefect
    server handed its final Completed state back without the data (Prefect: MissingResult). The
    CLI reads the table from where a run writes it; any other ending is raised as it was."""
    from prefect import flow
    from prefect.exceptions import MissingResult

    from flows.commands import summary_written_by

    summary = data_dir / "reports" / "summary.csv"
    assert summary_written_by(lambda: process_documents(RunParameters(data_dir=str(data_dir))), data_dir) == summary

    def finished_as_the_server_handed_it_back():
        # What Prefect raised at the end of that run (prefect/states.py: a final state, not
        # failed, whose data is None). Not reproduced on demand: it took a loaded server.
        raise MissingResult("State data is missing. Typically, this occurs when result persistence is disabled "
                            "and the state has been retrieved from the API.")

    assert summary_written_by(finished_as_the_server_handed_it_back, data_dir) == summary and summary.exists()

    @flow
    def failed_run():
        raise BudgetExceededError("over the budget")

    with pytest.raises(BudgetExceededError, match="over the budget"):
        summary_written_by(failed_run, data_dir)


def test_collect_resubmits_retryable_requests_rebuilt_from_the_inbox(data_dir, api):
    inbox = data_dir / "inbox"
    write(inbox, "fine.txt", PROSE)
    write(inbox, "expires.txt", PROSE + "[[simulate:expired]]")
    write(inbox, "edited.txt", PROSE + "[[simulate:expired]] first version")
    process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=1_000, wait=False))
    write(inbox, "edited.txt", PROSE + "[[simulate:expired]] second version")  # changed before the retry
    collect_batches(data_dir=str(data_dir), wait=True, max_attempts=3)
    rows = read_summary(data_dir)
    assert rows["fine.txt"]["status"] == "complete"
    assert rows["expires.txt"]["status"] == "failed" and "gave up after 3 attempts" in rows["expires.txt"]["reason"]
    assert rows["edited.txt"]["status"] == "failed" and "changed since it was planned" in rows["edited.txt"]["reason"]
    sent = [cid for _, ids in api.sim.create_log for cid in ids]
    assert sum("expires" in c for c in sent) == 3 and sum("edited" in c for c in sent) == 1
    assert sum("fine" in c for c in sent) == 1


def test_near_limit_document_is_decided_by_count_tokens_and_cached(data_dir, corpus, api):
    # Chinese text: cl100k over-counts it, so the local estimate alone would refuse it.
    shutil.copy(corpus / "text/hongloumeng_dream_of_the_red_chamber_GB18030.txt", data_dir / "inbox" / "hlm.txt")
    params = RunParameters(data_dir=str(data_dir), max_output_tokens=20_000)
    process_documents(params)
    row = read_summary(data_dir)["hlm.txt"]
    assert row["status"] == "complete"
    assert api.sim.count_calls == 1
    plan = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert plan.loc[0, "est_input_tokens"] < 1_000_000 < 1_161_000  # the exact figure, not the cl100k one
    process_documents(params)  # unchanged: the count comes from the ledger's cache
    assert api.sim.count_calls == 1


def test_model_facts_come_from_the_models_api_when_online(data_dir, corpus, monkeypatch):
    # The service says Sonnet 4.6 has a 50K window today; the built-in table says 1M.
    from simulator.engine import SimConfig
    from simulator.server import SimulatorServer

    shutil.copy(corpus / "text/sec_10k_apple.md", data_dir / "inbox" / "apple.md")  # ~53K tokens
    write(data_dir / "inbox", "small.txt", PROSE)
    config = SimConfig(processing_seconds=0.2, output_tokens=300,
                       model_overrides={"claude-sonnet-4-6": {"context_window": 50_000}})
    with SimulatorServer(config) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=4_000))
        sent = [cid for _, ids in server.sim.create_log for cid in ids]
    rows = read_summary(data_dir)
    assert rows["small.txt"]["status"] == "complete"
    # Too long for the service's 50K window (it fits the built-in 1M): read in parts instead.
    assert rows["apple.md"]["status"] == "complete" and rows["apple.md"]["parts"] >= 2
    assert "apple.md" in {r["source"] for r in ledger_inputs(data_dir) if r["input_tokens"] <= 50_000}
    assert all(r["input_tokens"] + r["output_tokens"] <= 50_000 for r in ledger_inputs(data_dir))
    assert not any(c.startswith("apple") and "-" not in c.rsplit("--", 1)[1] for c in sent)  # never whole


def ledger_inputs(data_dir: Path) -> list[dict]:
    from dataclasses import asdict


    ledger = open_ledger(data_dir)
    try:
        return [{**asdict(u.result), "source": u.source} for u in ledger.usage_rows()]
    finally:
        ledger.close()


def test_retired_model_is_refused_with_its_replacement(data_dir, monkeypatch):
    from longbatch.errors import UnknownModelError
    from simulator.engine import SimConfig
    from simulator.server import SimulatorServer

    write(data_dir / "inbox", "a.txt", PROSE)
    config = SimConfig(model_overrides={"claude-sonnet-4-5": {"lifecycle": "retired"}})
    with SimulatorServer(config) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        # The deprecations page names Sonnet 5.5 as Sonnet 4.5's replacement.
        with pytest.raises(UnknownModelError, match="claude-sonnet-5-5"):
            process_documents(RunParameters(data_dir=str(data_dir), model="claude-sonnet-4-5"))
        assert server.sim.create_log == []


def test_changed_output_budget_supersedes_unsent_work(data_dir, api):
    write(data_dir / "inbox", "a.txt", PROSE)
    from flows.planning import build_plan
    from tasks.claim import claim_plan

    # An older plan's request, queued but never sent (say, a run stopped before submitting).
    old_params = RunParameters(data_dir=str(data_dir), max_output_tokens=1_000)
    old_plan, _ = build_plan(old_params.settings())
    ledger = open_ledger(data_dir)
    claim_plan(ledger, old_plan)
    ledger.close()
    process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000))
    sent = [cid for _, ids in api.sim.create_log for cid in ids]
    assert len(sent) == 1  # only the current plan's request went out
    ledger = open_ledger(data_dir)
    old = ledger.request(old_plan.requests[0].fingerprint)
    ledger.close()
    assert old.state == "failed" and old.error_type == "superseded"
    assert read_summary(data_dir)["a.txt"]["granted_max_tokens"] == 2_000


def test_run_drops_the_retired_context_1m_beta(data_dir, api):
    write(data_dir / "inbox", "a.txt", PROSE)
    process_documents(RunParameters(data_dir=str(data_dir), model="claude-sonnet-4-5", max_output_tokens=1_000,
                                    betas=["context-1m-2025-08-07", "some-feature-2026-01-01"]))
    [batch_id] = [b for b, _ in api.sim.create_log]
    assert api.sim.batch_betas[batch_id] == ("some-feature-2026-01-01",)
    assert read_summary(data_dir)["a.txt"]["status"] == "complete"


def test_rows_from_before_projects_are_out_of_sight_and_nothing_paid_for_is_resent(data_dir, api, shared_ledger):
    """An existing shared ledger migrated to schema 6: its rows get the empty scope, which no data
    dir on a shared ledger uses. The data dir's reports tell what was paid for: nothing is resent."""
    if not shared_ledger:
        pytest.skip("about a shared (PostgreSQL) ledger")
    import sqlalchemy as sa

    write(data_dir / "inbox", "a.txt", PROSE)
    params = RunParameters(data_dir=str(data_dir), max_output_tokens=2_000)
    process_documents(params)
    engine = sa.create_engine(shared_ledger)
    with engine.begin() as conn:  # as the schema 5 -> 6 migration leaves a pre-project ledger
        for table in ("plan_rows", "requests", "reductions", "batches", "results"):
            conn.execute(sa.text(f"UPDATE {table} SET scope = ''"))
    engine.dispose()
    ledger = open_ledger(data_dir)
    assert not ledger.request_count() and ledger.plan() == []  # the old rows are nobody's
    ledger.close()
    process_documents(params)
    assert len(api.sim.create_log) == 1, "what the reports show was paid for is not sent again"
    assert read_summary(data_dir)["a.txt"]["status"] == "complete"
