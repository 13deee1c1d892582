"""Prompt caching: the shared, cacheable request layout and the money it saves (pure parts)."""

from __future__ import annotations

import hashlib

import pytest

from longbatch.cache import (BREAKPOINT, CachedUsage, batch_cost_usd, cache_facts, saving_from_billed, saving_usd,
                             uncached_cost_usd)
from longbatch.catalog import get_model
from tasks.build import build_request
from tasks.ingest import Document
from tasks.plan import make_plan
from tasks.prompts import load_prompt

SONNET46, OPUS46 = get_model("claude-sonnet-4-6"), get_model("claude-opus-4-6")


def doc(text: str, name: str = "doc.txt") -> Document:
    sha = hashlib.sha256(text.encode()).hexdigest()
    return Document(f"{name.split('.')[0]}-{sha[:12]}", name, "text", sha, len(text), (text,), text, len(text) // 4)


LONG = "The board met on Tuesday and approved the budget for the coming year. " * 400  # ~7K cl100k tokens


def _content(request):
    return request.params["messages"][0]["content"]


def three_prompts(tmp_path):
    (tmp_path / "risks.md").write_text("List the risks.")
    return [load_prompt("report", tmp_path), load_prompt("summary", tmp_path), load_prompt(str(tmp_path / "risks.md"),
                                                                                             tmp_path)]


def test_prompts_over_one_document_share_a_byte_identical_cached_prefix(tmp_path):
    plan = make_plan([doc(LONG)], three_prompts(tmp_path), SONNET46, 20_000, 4_096, cache="prime")
    report, summary, _ = plan.requests
    (doc_a, ask_a), (doc_b, ask_b) = _content(report), _content(summary)
    assert doc_a == doc_b  # the same bytes, breakpoint included
    assert doc_a["cache_control"] == {"type": "ephemeral", "ttl": "1h"} == BREAKPOINT
    assert "The board met" in doc_a["text"] and "The board met" not in ask_a["text"]
    assert ask_a != ask_b and "cache_control" not in ask_a and "cache_control" not in ask_b
    assert report.params["system"] == summary.params["system"]  # the prompt-independent instructions come first


def test_one_or_two_prompts_set_no_breakpoint_and_off_sets_none(tmp_path):
    """A 1 h cache write costs 2x the input and a read saves 0.9x: it pays from three prompts."""
    from longbatch.cache import readers_to_pay

    assert readers_to_pay() == 3
    prompts = three_prompts(tmp_path)
    (alone,) = make_plan([doc(LONG)], prompts[:1], SONNET46, 20_000, 4_096).requests
    assert all("cache_control" not in block for block in _content(alone))
    two = make_plan([doc(LONG)], prompts[:2], SONNET46, 20_000, 4_096).requests
    assert all("cache_control" not in block for r in two for block in _content(r))
    off = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="off").requests
    assert all("cache_control" not in block for r in off for block in _content(r))
    # auto caches only what it primes: a 7K-token document is not worth the wait, so no breakpoint.
    auto = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="auto")
    assert auto.primers == () and all("cache_control" not in block for r in auto.requests for block in _content(r))
    primed = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="prime").requests
    assert {r.fingerprint for r in primed} == {r.fingerprint for r in auto.requests}  # the same work
    assert sum(r.body_bytes for r in primed) > sum(r.body_bytes for r in auto.requests)


def test_below_the_models_minimum_no_breakpoint_is_set(tmp_path):
    prompt = load_prompt("report", tmp_path)
    short = doc("A short memo about parking. " * 100)  # ~700 tokens
    assert cache_facts(OPUS46.id).min_tokens == 4_096 and cache_facts(SONNET46.id).min_tokens == 1_024
    assert "cache_control" not in _content(build_request(short, prompt, OPUS46, 20_000, cache=True))[0]
    middle = doc("A longer memo about the parking rules of the building. " * 150)  # ~2K tokens
    assert "cache_control" not in _content(build_request(middle, prompt, OPUS46, 20_000, cache=True))[0]
    assert "cache_control" in _content(build_request(middle, prompt, SONNET46, 20_000, cache=True))[0]


def test_a_breakpoint_does_not_change_the_fingerprint(tmp_path):
    """Caching changes what is billed, not what is asked: a request sent with a breakpoint is
    the same work as without one, so toggling --cache or adding a prompt never resends it."""
    prompt = load_prompt("report", tmp_path)
    cached = build_request(doc(LONG), prompt, SONNET46, 20_000, cache=True)
    plain = build_request(doc(LONG), prompt, SONNET46, 20_000, cache=False)
    assert "cache_control" in _content(cached)[0] and "cache_control" not in _content(plain)[0]
    assert cached.fingerprint == plain.fingerprint
    assert cached.body_bytes > plain.body_bytes  # sizes are what goes on the wire
    other = build_request(doc(LONG + "!"), prompt, SONNET46, 20_000, cache=True)
    assert other.fingerprint != cached.fingerprint


def test_split_parts_share_their_cached_text_across_prompts(tmp_path):
    from longbatch.piece import PieceKind

    prompts = three_prompts(tmp_path)[:2] + three_prompts(tmp_path)[2:]
    book = doc(("Chapter text that goes on and on about many things in great detail. " * 200 + "\n\n") * 150)
    plan = make_plan([book], prompts, get_model("claude-sonnet-4-5"), 16_000, 4_096, cache="prime")
    parts = [r for r in plan.requests if r.piece.kind == PieceKind.PART]
    by_prompt = {p.name: [r for r in parts if r.prompt == p.name] for p in prompts}
    assert len(by_prompt["report"]) >= 2 and len(by_prompt["report"]) == len(by_prompt["summary"])
    for a, b in zip(by_prompt["report"], by_prompt["summary"]):
        assert _content(a)[0] == _content(b)[0] and _content(a)[0]["cache_control"] == BREAKPOINT


# -- money -------------------------------------------------------------------------------------

def test_issue_arithmetic_batches_and_a_primed_1h_cache():
    """Sonnet 4.6, 700K in / 300K out, 3 analyses: batches $9.90; primed 1 h cache $9.06."""
    plain = CachedUsage(input_tokens=700_000, output_tokens=300_000)
    assert 3 * batch_cost_usd(SONNET46, plain) == pytest.approx(9.90)
    primer = CachedUsage(input_tokens=0, output_tokens=300_000, cache_write_1h=700_000)
    reader = CachedUsage(input_tokens=0, output_tokens=300_000, cache_read=700_000)
    assert batch_cost_usd(SONNET46, primer) + 2 * batch_cost_usd(SONNET46, reader) == pytest.approx(9.06)
    short = [CachedUsage(0, 20_000, cache_write_1h=700_000), CachedUsage(0, 20_000, cache_read=700_000)]
    assert batch_cost_usd(SONNET46, short[0]) + 2 * batch_cost_usd(SONNET46, short[1]) == pytest.approx(2.76)
    assert 3 * batch_cost_usd(SONNET46, CachedUsage(700_000, 20_000)) == pytest.approx(3.60)


def test_write_rate_depends_on_ttl_and_savings_can_be_negative():
    five = CachedUsage(100, 0, cache_write_5m=1_000_000)
    hour = CachedUsage(100, 0, cache_write_1h=1_000_000)
    assert batch_cost_usd(SONNET46, five) == pytest.approx((100 * 3 + 1_000_000 * 3 * 1.25) / 1e6 / 2)
    assert batch_cost_usd(SONNET46, hour) == pytest.approx((100 * 3 + 1_000_000 * 3 * 2.0) / 1e6 / 2)
    assert saving_usd(SONNET46, hour) == pytest.approx(-1.5)  # a write never read back is a loss
    read = CachedUsage(1_000, 500, cache_read=99_000)
    assert read.hit_rate == pytest.approx(0.99)
    assert saving_usd(SONNET46, read) == pytest.approx(99_000 * 3 * 0.9 / 1e6 / 2)
    assert uncached_cost_usd(SONNET46, read) == pytest.approx(batch_cost_usd(SONNET46, CachedUsage(100_000, 500)))
    billed = batch_cost_usd(SONNET46, read)
    assert saving_from_billed(SONNET46, 1_000, 500, 0, 99_000, billed) == pytest.approx(saving_usd(SONNET46, read))
    assert CachedUsage().hit_rate == 0.0


def test_unknown_model_gets_the_largest_minimum():
    assert cache_facts("claude-future-9").min_tokens == 4_096
    assert cache_facts("claude-sonnet-4-5-20250929").min_tokens == 1_024  # an alias


def test_the_worst_case_counts_the_cache_write_premium(tmp_path):
    """A budget is a promise: a request that may write the 1 h cache may cost 2x its input."""
    prompts = three_prompts(tmp_path)
    cached = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="prime").document_rows[0]
    plain = make_plan([doc(LONG)], prompts, SONNET46, 20_000, 4_096, cache="off").document_rows[0]
    premium = cached.est_input_tokens * 3 / 1e6 * 1.0 * 0.5
    assert cached.max_cost_usd == pytest.approx(plain.max_cost_usd + premium, abs=1e-6)
    assert cached.est_input_usd == plain.est_input_usd
