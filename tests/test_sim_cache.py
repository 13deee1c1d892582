"""The simulator's prompt cache: prefix up to the breakpoint, minimum length, TTL, best-effort
hits inside a batch, and the usage fields the real API reports — over HTTP with the real SDK."""

from __future__ import annotations

import time

import anthropic

from simulator.engine import SimConfig
from simulator.prompt_cache import cached_prefix
from simulator.server import SimulatorServer
from tests.test_simulator import run_batch

DOC = "<document>\n" + "The board approved the budget and the plan for the next year. " * 600 + "\n</document>"
BP = {"type": "ephemeral", "ttl": "1h"}


def params(ask: str, doc: str = DOC, breakpoint: dict | None = BP, model: str = "claude-sonnet-4-6") -> dict:
    block = {"type": "text", "text": doc, **({"cache_control": breakpoint} if breakpoint else {})}
    return {"model": model, "max_tokens": 500, "system": "You write reports.",
            "messages": [{"role": "user", "content": [block, {"type": "text", "text": ask}]}]}


def test_prefix_ends_at_the_last_breakpoint_and_ignores_what_follows():
    a, b = cached_prefix(params("Summarise.")), cached_prefix(params("List the risks."))
    assert a is not None and a.key == b.key and a.ttl == "1h"
    assert cached_prefix(params("x", doc=DOC + " ")).key != a.key  # one byte more is another prefix
    assert cached_prefix(params("x", model="claude-opus-4-6")).key != a.key  # caches are per model
    assert cached_prefix(params("x", breakpoint=None)) is None
    assert cached_prefix(params("x", breakpoint={"type": "ephemeral"})).ttl == "5m"


def test_a_later_batch_reads_what_an_earlier_one_wrote():
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=50)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        _, first = run_batch(client, [{"custom_id": "primer", "params": params("Write a report.")}])
        _, later = run_batch(client, [{"custom_id": f"r{i}", "params": params(f"Question {i}?")} for i in range(3)])
        _, plain = run_batch(client, [{"custom_id": "plain", "params": params("Write a report.", breakpoint=None)}])
    primer = first["primer"]
    assert primer.cache_creation_tokens > 4_000 and primer.cache_write_1h_tokens == primer.cache_creation_tokens
    assert primer.cache_read_tokens == 0 and primer.input_tokens < 50
    for outcome in later.values():
        assert outcome.cache_read_tokens == primer.cache_creation_tokens and outcome.cache_creation_tokens == 0
        assert outcome.usage.hit_rate > 0.95
    # The same request uncached pays every token as input, and the totals agree.
    assert plain["plain"].cache_read_tokens == plain["plain"].cache_creation_tokens == 0
    assert plain["plain"].input_tokens == primer.input_tokens + primer.cache_creation_tokens


def test_usage_carries_the_ttl_breakdown_on_the_wire():
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=50)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        batch, _ = run_batch(client, [{"custom_id": "five", "params": params("Go.", breakpoint={"type": "ephemeral"})}])
        (line,) = list(client.beta.messages.batches.results(batch.id))
    usage = line.result.message.usage
    assert usage.cache_creation.ephemeral_5m_input_tokens == usage.cache_creation_input_tokens > 4_000
    assert usage.cache_creation.ephemeral_1h_input_tokens == 0


def test_below_the_minimum_nothing_is_cached():
    short = "<document>A short memo about parking.</document>"
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=50)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        run_batch(client, [{"custom_id": "a", "params": params("Go.", doc=short)}])
        _, out = run_batch(client, [{"custom_id": "b", "params": params("Go.", doc=short)}])
        # ~2,000 tokens: above Sonnet 4.6's minimum (1,024), below Opus 4.6's (4,096).
        middle = "<document>" + "Tables of figures for the year. " * 220 + "</document>"
        _, sonnet = run_batch(client, [{"custom_id": "s", "params": params("Go.", doc=middle)}])
        _, opus = run_batch(client, [{"custom_id": "o", "params": params("Go.", doc=middle, model="claude-opus-4-6")}])
    assert out["b"].cache_read_tokens == out["b"].cache_creation_tokens == 0
    assert 1_024 <= sonnet["s"].cache_creation_tokens < 4_096
    assert opus["o"].cache_creation_tokens == 0 and opus["o"].cache_read_tokens == 0


def test_an_entry_expires_after_its_ttl(monkeypatch):
    import simulator.prompt_cache as pc

    monkeypatch.setitem(pc.TTL_SECONDS, "5m", 0.5)  # a scaled-down 5 minutes
    with SimulatorServer(SimConfig(processing_seconds=0.1, output_tokens=50)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        five = {"type": "ephemeral", "ttl": "5m"}
        run_batch(client, [{"custom_id": "a", "params": params("Go.", breakpoint=five)}])
        time.sleep(1.0)
        _, out = run_batch(client, [{"custom_id": "b", "params": params("Go.", breakpoint=five)}])
    assert out["b"].cache_read_tokens == 0 and out["b"].cache_creation_tokens > 4_000  # written again


def test_hits_inside_one_batch_are_best_effort_by_the_setting():
    requests = [{"custom_id": f"q{i}", "params": params(f"Question {i}?")} for i in range(40)]
    rates = {}
    for rate in (0.0, 0.5, 1.0):
        with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=20, cache_hit_rate_in_batch=rate)) as server:
            client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
            _, out = run_batch(client, requests)
        rates[rate] = sum(1 for o in out.values() if o.cache_read_tokens) / (len(out) - 1)
    assert rates[0.0] == 0.0 and rates[1.0] == 1.0 and 0.25 < rates[0.5] < 0.75


def test_cache_survives_a_simulator_restart(tmp_path):
    config = SimConfig(processing_seconds=0.2, output_tokens=50, state_dir=tmp_path)
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        run_batch(client, [{"custom_id": "a", "params": params("Go.")}])
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        _, out = run_batch(client, [{"custom_id": "b", "params": params("Again.")}])
    assert out["b"].cache_read_tokens > 4_000
