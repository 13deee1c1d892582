"""What a person sees in the Prefect UI: the table, the Markdown summary, the progress artifact,
the final state's message and the task-run names, read back from Prefect's API after real runs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from flows.artifacts import (
    RunOutcome,
    KEYED_ARTIFACT_BYTES,
    WaitReporter,
    WaitState,
    artifact_key,
    event_bytes,
    outcome_of,
    publish_run_artifacts,
    read_summary,
    summary_markdown,
    table_pages,
    table_rows,
)
from flows.process import RunParameters, collect_batches, process_documents
from longbatch.ledger import BatchRecord
from tasks.batches import BatchStatus

PROSE = "The committee reviewed the annual accounts in detail. Each member signed the minutes. " * 30


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    monkeypatch.setenv("LONGBATCH_SIM_PROCESSING_SECONDS", "0.3")
    monkeypatch.setenv("LONGBATCH_SIM_OUTPUT_TOKENS", "600")


def write(inbox: Path, name: str, text: str | bytes) -> None:
    path = inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def artifacts_of(flow_run_id) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.type: a for a in found}


def latest_with_key(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found


def test_a_run_publishes_table_summary_and_a_final_message(data_dir):
    inbox = data_dir / "inbox"
    write(inbox, "minutes.txt", PROSE)
    write(inbox, "sub/agenda.md", "# Agenda\n\n" + PROSE)
    write(inbox, "refuse <this>.txt", PROSE + "[[simulate:refusal]]")
    write(inbox, "broken.pdf", b"%PDF-1.4 nothing else")
    state = process_documents(RunParameters(data_dir=str(data_dir), simulate=True, max_output_tokens=1_000),
                              return_state=True)

    assert state.is_completed()
    assert re.fullmatch(r"2 complete, 1 refused, 1 error, \$\d+\.\d\d", state.message)
    result = state.result()
    assert result["rows"] == 4 and result["by_status"] == {"complete": 2, "refused": 1, "error": 1}

    summary = pd.read_csv(result["summary_csv"])
    found = artifacts_of(state.state_details.flow_run_id)
    assert set(found) == {"table", "markdown", "progress"}  # progress: while it waited
    assert found["progress"].data == 100.0
    table = found["table"]
    assert table.key == artifact_key(data_dir, "documents")
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [(r["document"], r["prompt"], r["status"]) for r in rows] == \
        list(zip(summary["source"], summary["prompt"], summary["status"], strict=True))
    by_doc = {r["document"]: r for r in rows}
    assert by_doc["minutes.txt"]["report"].startswith("reports/") and by_doc["minutes.txt"]["cost_usd"] > 0
    # A simulated report ends on a whole line: at most the 600 tokens the simulator was asked for.
    assert by_doc["minutes.txt"]["model"] == "claude-sonnet-4-6" and 500 < by_doc["minutes.txt"]["output_tokens"] <= 600
    assert by_doc["broken.pdf"]["reason"] and by_doc["broken.pdf"]["cost_usd"] is None

    md = found["markdown"]
    assert md.key == artifact_key(data_dir, "summary")
    text = md.data
    assert "| complete | 2 |" in text and "| refused | 1 |" in text and "| error | 1 |" in text
    assert f"${summary['cost_usd'].sum():,.2f}" in text
    assert "broken.pdf" in text and summary.set_index("source").loc["broken.pdf", "reason"].split(":")[0] in text
    assert r"refuse \<this\>.txt" in text  # a file name is shown as written, not as an HTML tag
    assert str((data_dir / "reports").resolve()) in text

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    ingest_names = sorted(t.name for t in task_runs if t.name.startswith("ingest-"))
    # One task reads a chunk of documents (on every core), named after them.
    assert len(ingest_names) == 1 and ingest_names[0].endswith("-and-3-more")
    assert ingest_names[0].removeprefix("ingest-").removesuffix("-and-3-more") in set(summary["source"])


def test_a_submit_only_run_and_its_collector_both_report(data_dir):
    write(data_dir / "inbox", "minutes.txt", PROSE)
    submitted = process_documents(RunParameters(data_dir=str(data_dir), simulate=True, max_output_tokens=1_000,
                                                wait=False), return_state=True)
    assert submitted.message.startswith("1 pending, $0.00")
    text = artifacts_of(submitted.state_details.flow_run_id)["markdown"].data
    assert "Still in progress (1)" in text and "collector" in text

    collected = collect_batches(data_dir=str(data_dir), simulate=True, wait=True, return_state=True)
    assert collected.message.startswith("1 complete, $")
    found = artifacts_of(collected.state_details.flow_run_id)
    assert {"table", "markdown", "progress"} <= set(found)
    assert found["progress"].key == artifact_key(data_dir, "progress") and found["progress"].data == 100.0
    # The same keys across runs: the Artifacts page keeps their history.
    assert len(latest_with_key(artifact_key(data_dir, "summary"))) == 2


def test_artifact_keys_are_stable_distinct_and_valid(tmp_path):
    a, b = tmp_path / "Data Dir_1", tmp_path / "other" / "Data Dir_1"
    assert artifact_key(a, "summary") == artifact_key(a, "summary")
    assert artifact_key(a, "summary") != artifact_key(b, "summary")
    for key in (artifact_key(a, "documents"), artifact_key(Path("/"), "progress"), artifact_key(b, "summary")):
        assert re.fullmatch(r"[a-z0-9-]+", key), key


def frame(rows: list[dict]) -> pd.DataFrame:
    columns = ["source", "prompt", "status", "reason", "model", "input_tokens", "output_tokens", "cost_usd",
               "report"]
    return pd.DataFrame(rows, columns=columns)


def test_outcome_orders_statuses_and_sums_only_billed_usage():
    f = frame([
        {"source": "a", "prompt": "report", "status": "failed", "reason": "invalid_request_error: bad"},
        {"source": "b", "prompt": "report", "status": "complete", "input_tokens": 10, "output_tokens": 5,
         "cost_usd": 0.25},
        {"source": "c", "prompt": "report", "status": "complete", "input_tokens": 1, "output_tokens": 2,
         "cost_usd": 0.36},
        {"source": "d", "prompt": "report", "status": "brand_new_status"},
    ])
    outcome = outcome_of(f)
    assert outcome == RunOutcome({"complete": 2, "failed": 1, "brand_new_status": 1}, 11, 7, 0.61)
    assert outcome.message == "2 complete, 1 failed, 1 brand_new_status, $0.61"
    assert outcome_of(frame([])).message == "no documents, $0.00"


def test_markdown_lists_every_failure_with_its_reason_and_escapes_it(tmp_path):
    f = frame([
        {"source": "x|y.pdf", "prompt": "report", "status": "error", "reason": "encrypted: needs a *password*"},
        {"source": "z.txt", "prompt": "summary", "status": "truncated", "reason": None},
        {"source": "ok.txt", "prompt": "report", "status": "complete", "cost_usd": 1.5},
    ])
    text = summary_markdown(f, tmp_path, "longbatch run", host="worker-7")
    assert text.startswith("# longbatch run: 1 complete, 1 truncated, 1 error, $1.50")
    assert "## Did not complete (2)" in text
    assert r"**x\|y.pdf** (report): error — encrypted: needs a \*password\*" in text
    assert "**z.txt** (summary): truncated — no reason recorded" in text
    assert "ok.txt" not in text.split("## Did not complete")[1]
    assert "On host `worker-7`" in text and "Still in progress" not in text
    empty = summary_markdown(frame([]), tmp_path, "longbatch run", host="h")
    assert "No documents in the inbox" in empty


def test_table_rows_turn_blank_cells_into_nulls(tmp_path):
    csv = tmp_path / "summary.csv"
    frame([{"source": "a.pdf", "prompt": "report", "status": "error", "reason": "corrupt"}]).to_csv(csv, index=False)
    assert table_rows(read_summary(csv)) == [{
        "document": "a.pdf", "prompt": "report", "status": "error", "reason": "corrupt", "model": None,
        "input_tokens": None, "output_tokens": None, "cost_usd": None, "report": None}]


def collection_events(key: str, timeout: float = 20.0) -> list:
    """The server's events announcing the artifact collection `key` (written to its event
    store a moment after the artifact is)."""
    from prefect.events.filters import EventFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(resource=EventResourceFilter(
                id_prefix=["prefect.artifact-collection."], labels={"prefect.resource.name": key})), limit=50)
        found = [e for e in page.events if e.resource.get("prefect.resource.name") == key]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_a_table_of_12000_documents_is_announced_and_every_row_is_on_the_run(tmp_path):
    """The server refuses events over 1.5 MB, and a keyed artifact's event carries its data: a
    whole 12,000-row table (3.4 MB) was stored but never announced. The keyed table holds what
    fits, the rows that did not complete first; every row is in the run's unkeyed pages."""
    data_dir = tmp_path / "big data"
    rows = []
    for i in range(12_000):
        failed = i % 1_000 == 999
        rows.append({"source": f"annual reports/holding-{i:05d} \"FY2025\".pdf", "prompt": "report",
                     "status": "failed" if failed else "complete",
                     "reason": f"invalid_request_error: the request for part {i} was refused" if failed else None,
                     "model": "claude-sonnet-4-6", "input_tokens": 150_000 + i, "output_tokens": 40_000,
                     "cost_usd": 0.825, "report": f"reports/holding-{i:05d}/claude-sonnet-4-6/report.md"})
    (data_dir / "reports").mkdir(parents=True)
    csv = data_dir / "reports" / "summary.csv"
    frame(rows).to_csv(csv, index=False)

    @flow(name="publish-a-big-table")
    def publish() -> None:
        publish_run_artifacts(csv, data_dir, "longbatch run")

    state = publish(return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
            state.state_details.flow_run_id])))
    tables = [a for a in found if a.type == "table"]
    keyed = [a for a in tables if a.key == artifact_key(data_dir, "documents")]
    pages = sorted((a for a in tables if a.key is None), key=lambda a: int(a.description.split("rows ")[1]
                                                                            .split("–")[0].replace(",", "")))
    assert len(keyed) == 1 and len(pages) >= 3

    # Every row, once, in summary.csv's order, across the pages; each page under the limit.
    paged = [r for page in pages for r in json.loads(page.data)]
    assert [r["document"] for r in paged] == [r["source"] for r in rows]
    assert all(event_bytes(json.loads(page.data)) <= KEYED_ARTIFACT_BYTES for page in pages)
    assert "rows 1–" in pages[0].description and f"of {len(rows):,}" in pages[-1].description

    shown = json.loads(keyed[0].data)
    assert 1_000 < len(shown) < len(rows)
    assert [r["status"] for r in shown[:12]] == ["failed"] * 12 and shown[12]["status"] == "complete"
    assert f"{len(shown):,} of 12,000 rows" in keyed[0].description

    # The server announced both keyed artifacts: no event was refused for its size.
    assert collection_events(artifact_key(data_dir, "documents"))
    assert collection_events(artifact_key(data_dir, "summary"))


def test_a_summary_of_many_failures_lists_what_fits_and_counts_the_rest(tmp_path):
    f = frame([{"source": f"contract-{i:05d}.pdf", "prompt": "report", "status": "error",
                "reason": "encrypted: the PDF needs a password to be read " + "x" * 40} for i in range(20_000)])
    text = summary_markdown(f, tmp_path, "longbatch run", host="h")
    assert "## Did not complete (20000)" in text
    listed = [line for line in text.splitlines() if line.startswith("- **contract-")]
    assert 1_000 < len(listed) < 20_000
    assert listed[0].startswith("- **contract-00000.pdf**")
    assert f"- … and {20_000 - len(listed):,} more: every one is in `summary.csv`" in text
    assert event_bytes(text) <= KEYED_ARTIFACT_BYTES
    # Whatever the names hold: emoji (4 bytes each in the server's event), control characters
    # (6 bytes each there), CJK, backslashes and quotes; failures and pending lists both full.
    for odd in ("\U0001F4C4" * 200, "\x01" * 100, "年度报告" * 50, "\\" * 100 + '"' * 100):
        rows = [{"source": f"{odd}-{i}.pdf", "prompt": "report", "status": status, "reason": odd * 4}
                for i in range(3_000) for status in ("error", "pending")]
        text = summary_markdown(frame(rows), tmp_path, "longbatch run", host="h")
        assert event_bytes(text) <= KEYED_ARTIFACT_BYTES and "more: every one is in" in text
    few = summary_markdown(f.head(3), tmp_path, "longbatch run", host="h")
    assert "more: every one" not in few and few.count("- **contract-") == 3


def test_a_reason_of_megabytes_is_cut_in_the_table_and_kept_whole_in_the_csv(tmp_path):
    csv = tmp_path / "summary.csv"
    reason = "invalid_request_error: " + "the model said no. " * 100_000
    frame([{"source": "a.pdf", "prompt": "report", "status": "failed", "reason": reason}]).to_csv(csv, index=False)
    (row,) = table_rows(read_summary(csv))
    assert row["reason"].startswith(reason[:2_000]) and row["reason"].endswith("whole in summary.csv)")
    assert event_bytes([row]) < 10_000 and len(table_pages([row])) == 1
    assert read_summary(csv)["reason"][0] == reason


def test_table_pages_keep_order_and_stay_under_the_limit():
    rows = [{"document": f"d{i}", "reason": "r" * (i % 50)} for i in range(500)]
    pages = table_pages(rows, limit=2_000)
    assert [r for p in pages for r in p] == rows
    assert all(event_bytes(p) <= 2_000 for p in pages) and len(pages) > 5
    assert table_pages(rows[:3], limit=2_000) == [rows[:3]]
    huge = [{"document": "x" * 5_000}]
    assert table_pages(huge + rows[:2], limit=2_000) == [huge, rows[:2]]  # a row too big is a page alone
    assert table_pages([]) == [[]]


def status(api_id: str, state: str, created_at: float, **counts: int) -> BatchStatus:
    record = BatchRecord(api_id, api_id, "submitted", (), sum(counts.values()), created_at - 1, created_at)
    return BatchStatus(record, state, counts, None)


def test_wait_state_counts_batches_requests_and_the_first_expiry():
    statuses = [status("b1", "ended", 1_000.0, succeeded=3), status("b2", "in_progress", 2_000.0, processing=4),
                status("b3", "in_progress", 3_000.0, processing=1, succeeded=1)]
    state = WaitState.of(statuses, now=4_000.0)
    assert (state.ended, state.total) == (1, 3)
    assert state.requests == {"succeeded": 4, "processing": 5}
    assert state.elapsed_seconds == 3_000.0
    assert state.expires_at == 2_000.0 + 24 * 3600
    assert round(state.percent, 1) == 33.3
    line = state.line()
    assert "1 of 3 batch(es) ended, 2 pending" in line and "50 min 00 s" in line and "1970-01-02 00:33 UTC" in line
    assert WaitState.of([], now=5.0).percent == 100.0


def test_heartbeat_is_logged_every_few_minutes_even_when_nothing_changes(tmp_path):
    now = [10_000.0]
    lines: list[str] = []
    key = artifact_key(tmp_path, "progress")

    @flow
    def waiting() -> None:  # artifacts belong to a run, as in wait_task
        reporter = WaitReporter(tmp_path, lines.append, heartbeat_seconds=300, clock=lambda: now[0])
        same = [status("b1", "in_progress", 9_000.0, processing=2)]
        for _ in range(7):  # a poll a minute, the counts never move (as on the real API)
            reporter(same)
            now[0] += 60
        progress = latest_with_key(key)
        assert len(progress) == 1 and progress[0].data == 0.0  # one artifact, updated in place
        reporter([status("b1", "ended", 9_000.0, succeeded=2)])

    waiting()
    assert len(lines) == 2 and all("0 of 1 batch(es) ended" in line for line in lines)
    assert "16 min 40 s" in lines[0] and "21 min 40 s" in lines[1]
    assert [a.data for a in latest_with_key(key)] == [100.0]
