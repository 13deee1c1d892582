"""Expected cost: output at the share of the grant used before, input priced by the planned
cache writes and reads, and documents that do not fit counted in neither figure."""

from __future__ import annotations

import hashlib

import pytest

from longbatch.catalog import get_model
from longbatch.records import ResultRecord, UsageRecord
from tasks.expected import DEFAULT_OUTPUT_FRACTION, expected_by_document, expected_costs, output_fractions
from tasks.ingest import Document
from tasks.plan import make_plan
from tasks.prompts import load_prompt

SONNET46, SONNET45 = get_model("claude-sonnet-4-6"), get_model("claude-sonnet-4-5")
LONG = "The board met on Tuesday and approved the budget for the coming year. " * 400


def doc(text: str, name: str = "doc.txt") -> Document:
    sha = hashlib.sha256(text.encode()).hexdigest()
    return Document(f"{name.split('.')[0]}-{sha[:12]}", name, "text", sha, len(text), (text,), text, len(text) // 4)


def usage(prompt: str, output: int, grant: int, kind: str = "succeeded") -> UsageRecord:
    return UsageRecord(ResultRecord("b", prompt, "f", 1, kind, output_tokens=output), "claude-sonnet-4-6", "a.txt",
                       prompt, max_tokens=grant)


def test_output_share_is_learnt_per_model_and_prompt():
    shares = output_fractions([usage("report", 50_000, 100_000), usage("report", 10_000, 100_000),
                               usage("summary", 2_000, 10_000), usage("summary", 9_000, 10_000, "errored")])
    assert shares == {("claude-sonnet-4-6", "report"): pytest.approx(0.3),
                      ("claude-sonnet-4-6", "summary"): pytest.approx(0.2)}


def test_one_request_no_cache_is_input_plus_the_share_of_its_grant(tmp_path):
    plan = make_plan([doc(LONG)], [load_prompt("report", tmp_path)], SONNET46, 20_000, 4_096)
    (row,) = plan.document_rows
    (cost,) = expected_costs(plan, {}).values()
    assert cost == pytest.approx((row.est_input_tokens * 3 + DEFAULT_OUTPUT_FRACTION * 20_000 * 15) / 1e6 / 2)
    learnt = expected_costs(plan, {("claude-sonnet-4-6", "report"): 0.5})[row.custom_id]
    assert learnt == pytest.approx((row.est_input_tokens * 3 + 0.5 * 20_000 * 15) / 1e6 / 2)
    assert cost < row.max_cost_usd


def test_cached_readers_are_expected_at_a_tenth_when_primed(tmp_path):
    (tmp_path / "risks.md").write_text("List the risks.")
    prompts = [load_prompt("report", tmp_path), load_prompt("summary", tmp_path),
               load_prompt(str(tmp_path / "risks.md"), tmp_path)]
    primed = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="prime")
    unprimed = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="auto")  # too small to prime or cache
    off = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="off")
    rows = {r.prompt: r for r in primed.document_rows}
    e = expected_costs(primed, {})
    out = lambda r: DEFAULT_OUTPUT_FRACTION * r.granted_max_tokens * 15  # noqa: E731
    assert e[rows["report"].custom_id] == pytest.approx((rows["report"].est_input_tokens * 3 * 2.0
                                                         + out(rows["report"])) / 1e6 / 2)
    assert e[rows["summary"].custom_id] == pytest.approx((rows["summary"].est_input_tokens * 3 * 0.1
                                                          + out(rows["summary"])) / 1e6 / 2)
    totals = [sum(expected_costs(p, {}).values()) for p in (primed, unprimed, off)]
    assert totals[0] < totals[2] == pytest.approx(totals[1])  # auto does not cache what it does not prime


def test_documents_that_do_not_fit_count_in_neither_figure(tmp_path):
    prompt = load_prompt("report", tmp_path)
    huge = doc("word " * 1_200_000, "huge.txt")  # far over any window, and one page: it cannot be split
    plan = make_plan([doc(LONG), huge], [prompt], SONNET45, 60_000, 60_000)
    statuses = {r.source: str(r.status) for r in plan.document_rows}
    assert statuses["huge.txt"] == "does_not_fit"
    expected = expected_by_document(plan, expected_costs(plan, {}))
    assert set(expected) == {("doc.txt", "report")}
    assert plan.max_cost_usd == pytest.approx(next(r.max_cost_usd for r in plan.document_rows if r.source == "doc.txt"))
