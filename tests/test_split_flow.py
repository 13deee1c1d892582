"""Split documents end to end: parts in one batch, then the step that combines their reports,
over the real SDK and HTTP against the simulator, with real Prefect flow runs."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli_env, longbatch_cmd
from flows.process import RunParameters, collect_batches, process_documents
from longbatch.catalog import get_model
from longbatch.failpoints import SPLIT_POINTS
from longbatch.ledger import Ledger
from longbatch.piece import PieceKind
from longbatch.records import RequestRecord, RequestState, StepState
from simulator.engine import SimConfig
from simulator.server import SimulatorServer
from tasks.ingest import read_document
from tasks.plan import make_plan
from tasks.prompts import load_prompts
from test_split import ends_cleanly

# Small windows (the service's facts, from its Models API) make small documents split, fast.
SMALL_WINDOW = {"claude-sonnet-4-6": {"context_window": 30_000}}
PARAGRAPH = ("The treasurer reported on the reserve fund and the board asked three questions about it. "
             "Each answer was minuted in full, with the figures the treasurer gave. ")


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")


def minutes(n: int, marker_at: int | None = None, marker: str = "") -> str:
    paras = [f"Item {i}. " + PARAGRAPH * 6 for i in range(n)]
    if marker_at is not None:
        paras[marker_at] += "\n" + marker
    return "\n\n".join(paras) + "\n"


def summary(data_dir: Path) -> dict[str, dict]:
    frame = pd.read_csv(data_dir / "reports" / "summary.csv")
    return {r["source"]: r for r in frame.to_dict("records")}


def api_env(monkeypatch, server: SimulatorServer) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-split-test")


def part_requests(data_dir: Path, source: str) -> list[RequestRecord]:
    ledger = Ledger.for_data_dir(data_dir)
    try:
        rows = [r for r in ledger.requests_in_state(*RequestState)
                if r.source == source and r.piece.kind == PieceKind.PART]
    finally:
        ledger.close()
    return sorted(rows, key=lambda r: r.piece.index)


def test_two_and_a_half_million_tokens_become_parts_and_one_report(data_dir, corpus, monkeypatch, capsys):
    """The acceptance case: ~2.5M tokens (by the service's own count) on a 1M window."""
    text = (corpus / "text/war_and_peace_tolstoy.txt").read_text(encoding="utf-8")
    text += "\n\n" + (corpus / "text/cuad_contracts_concat_112.txt").read_text(encoding="utf-8")[:5_600_000]
    (data_dir / "inbox" / "archive.txt").write_text(text, encoding="utf-8")
    config = SimConfig(processing_seconds=0.3, output_tokens=500)
    with SimulatorServer(config) as server:
        api_env(monkeypatch, server)
        import anthropic

        authority = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-split-test").messages.count_tokens(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": text}]).input_tokens
        assert 2_300_000 <= authority <= 2_700_000

        # The plan, before anything is sent, shows every part and the step combining them.
        from flows.cli import main

        assert main(["plan", "--data-dir", str(data_dir)]) == 0
        printed = capsys.readouterr().out
        plan = pd.read_csv(data_dir / "plan.csv", keep_default_na=False)
        parts = plan[plan["piece"] == "part"]
        final = plan[plan["part"] == "final"]
        assert len(parts) >= 3 and len(final) == 1
        assert all(f"{i}/{len(parts)}" in printed for i in range(1, len(parts) + 1))
        assert "after parts" in printed and f"split into {len(parts)} parts" in printed
        for _, row in pd.concat([parts, final]).iterrows():
            assert int(row["upper_input_tokens"]) + int(row["granted_max_tokens"]) <= 1_000_000
        assert not server.sim.create_log  # plan sends nothing

        result = process_documents(RunParameters(data_dir=str(data_dir)))
        creates = [(batch, ids) for batch, ids in server.sim.create_log]
        results = {cid: json.loads(line) for batch, _ in creates for line in server.sim.results(batch).splitlines()
                   for cid in [json.loads(line)["custom_id"]]}

    assert result["by_status"] == {"complete": 1}
    row = summary(data_dir)["archive.txt"]
    assert row["parts"] == len(parts) and row["status"] == "complete"
    # Each part and the final step created once; the final only after every part had ended.
    created = Counter(cid for _, ids in creates for cid in ids)
    assert set(created.values()) == {1} and len(created) == len(parts) + 1
    final_batch = next(i for i, (_, ids) in enumerate(creates) if any(c.endswith("-f") for c in ids))
    assert final_batch == len(creates) - 1
    # No part was too long for the service: every one succeeded, inside the window.
    for cid, item in results.items():
        assert item["result"]["type"] == "succeeded", item
        usage = item["result"]["message"]["usage"]
        assert usage["input_tokens"] + usage["output_tokens"] <= 1_000_000
    part_inputs = sum(item["result"]["message"]["usage"]["input_tokens"] for cid, item in results.items()
                      if not cid.endswith("-f"))
    assert part_inputs >= authority  # the parts together hold the whole text (plus their wrapping)

    # No part breaks a sentence, and together the parts are the whole text.
    doc = read_document(data_dir / "inbox" / "archive.txt", data_dir / "inbox")
    pieces = [r.piece for r in part_requests(data_dir, "archive.txt")]
    spans = [p.span for p in pieces]
    assert spans[0].start == 0 and spans[-1].end == len(doc.body)
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    assert all(ends_cleanly(doc.body, s.end) for s in spans)

    # The final report says what each part covered; its metadata links every part request.
    report = data_dir / row["report"]
    md = report.read_text(encoding="utf-8")
    assert md.startswith("> **Combined report.**")
    for i, piece in enumerate(pieces, 1):
        assert f"> - Part {i}: {piece.covers}" in md
    meta = json.loads(report.with_suffix(".json").read_text())
    assert meta["split"]["role"] == "final"
    assert [p["custom_id"] for p in meta["split"]["parts"]] == [r.custom_id for r in
                                                              part_requests(data_dir, "archive.txt")]
    assert all(Path(p["report"]).is_file() for p in meta["split"]["parts"])
    assert len(list(report.parent.glob("report.part-*.md"))) == len(parts)


def test_a_failed_part_fails_the_document_and_names_the_part(data_dir, monkeypatch):
    (data_dir / "inbox" / "minutes.txt").write_text(
        minutes(250, marker_at=125, marker="[[simulate:error=invalid_request_error]]"), encoding="utf-8")
    (data_dir / "inbox" / "short.txt").write_text(PARAGRAPH, encoding="utf-8")
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=300, model_overrides=SMALL_WINDOW)) as server:
        api_env(monkeypatch, server)
        process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000, max_attempts=2))
        sent = [cid for _, ids in server.sim.create_log for cid in ids]
    rows = summary(data_dir)
    assert rows["short.txt"]["status"] == "complete"
    row = rows["minutes.txt"]
    assert row["status"] == "failed" and row["parts"] >= 2
    assert "invalid_request_error" in row["reason"] and "lines" in row["reason"]
    assert not any(c.endswith("-f") for c in sent)  # nothing combined from an incomplete set
    parts = part_requests(data_dir, "minutes.txt")
    assert sorted(p.state for p in parts).count("failed") == 1
    assert all((data_dir / "reports").rglob("report.part-*.md"))


def test_no_wait_then_collect_finishes_and_a_rerun_sends_nothing(data_dir, monkeypatch):
    (data_dir / "inbox" / "minutes.txt").write_text(minutes(250), encoding="utf-8")
    with SimulatorServer(SimConfig(processing_seconds=0.3, output_tokens=300, model_overrides=SMALL_WINDOW)) as server:
        api_env(monkeypatch, server)
        process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000, wait=False))
        first = summary(data_dir)["minutes.txt"]
        assert first["status"] == "pending" and re.match(r"parts: 0 of \d+", first["reason"])
        collect_batches(data_dir=str(data_dir), wait=True)
        done = summary(data_dir)["minutes.txt"]
        creates = len(server.sim.create_log)
        process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000))
        assert len(server.sim.create_log) == creates  # all known: nothing sent again

        # The final step is rebuilt identically from the results archive if part reports are gone.
        from tasks.reduce import build_reduce_request

        for md in (data_dir / "reports").rglob("report.part-*.md"):
            md.unlink()
        ledger = Ledger.for_data_dir(data_dir)
        final = next(r for r in ledger.reductions_in_state(StepState.BUILT) if r.recipe.piece.kind == PieceKind.FINAL)
        again = build_reduce_request(ledger, final.recipe, data_dir)
        ledger.close()
    assert done["status"] == "complete" and done["parts"] >= 2
    assert done["cost_usd"] > 0 and done["output_tokens"] > 300  # every part's output and the final's
    assert again.fingerprint == final.fingerprint


def test_the_budget_counts_every_part_and_step_and_status_shows_steps(data_dir, monkeypatch, capsys):
    from flows.cli import main
    from longbatch.errors import BudgetExceededError

    (data_dir / "inbox" / "minutes.txt").write_text(minutes(250), encoding="utf-8")
    # The plan the run will make (the service reports a 30K window): parts, then the final step.
    model = dataclasses.replace(get_model("claude-sonnet-4-6"), context_window=30_000)
    offline = make_plan([read_document(data_dir / "inbox" / "minutes.txt", data_dir / "inbox")],
                        load_prompts(["report"], data_dir), model, 2_000, 8_192)
    parts_cost = sum(r.max_cost_usd for r in offline.rows if r.piece.kind == PieceKind.PART)
    step_cost = sum(r.max_cost_usd for r in offline.rows if r.piece.is_step)
    assert parts_cost > 0 and step_cost > 0
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=300, model_overrides=SMALL_WINDOW)) as server:
        api_env(monkeypatch, server)
        with pytest.raises(BudgetExceededError, match="could cost up to"):  # parts fit the budget; the step not
            process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000,
                                            budget_usd=parts_cost + step_cost / 2))
        assert not server.sim.create_log
        process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000, wait=False))
    ledger = Ledger.for_data_dir(data_dir)
    plan = ledger.plan()[0].row
    ledger.close()
    assert plan.parts >= 2 and plan.max_cost_usd == pytest.approx(parts_cost + step_cost, abs=1e-5)
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    assert "Steps combining part reports: 1 waiting" in capsys.readouterr().out


@pytest.mark.sim_env(LONGBATCH_SIM_MODEL_OVERRIDES=json.dumps(SMALL_WINDOW))
@pytest.mark.parametrize("point", SPLIT_POINTS + ("after-create", "after-collected"))
def test_sigkill_between_parts_and_combining_pays_once(point, tmp_path, standalone_simulator):
    url, state = standalone_simulator
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    (data_dir / "inbox" / "minutes.txt").write_text(minutes(250), encoding="utf-8")
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-crash-test", LONGBATCH_POLL_INITIAL_SECONDS="0.2",
                  LONGBATCH_POLL_MAX_SECONDS="0.5", LONGBATCH_INTENT_GRACE_SECONDS="0",
                  LONGBATCH_CREATE_GRACE_SECONDS="1")
    args = [*longbatch_cmd(), "run", "--data-dir", str(data_dir), "--max-output-tokens", "2000"]
    crashed = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**env, "LONGBATCH_FAILPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, f"{point} was not reached:\n{crashed.stderr[-3000:]}"
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    row = summary(data_dir)["minutes.txt"]
    assert row["status"] == "complete", row
    created: Counter = Counter()
    for path in state.glob("msgbatch_*.json"):
        created.update(json.loads(path.read_text())["custom_ids"])
    assert len(created) == row["parts"] + 1 and set(created.values()) == {1}, created
