"""Expected cost (tasks/expected.py) against what the simulator billed, per document and in
total, and what prompt caching saved — three prompts over two long corpus documents.

    python bench/expected_vs_billed.py [--corpus ../shared/corpus] [--cache prime|auto|off]

The requests go to the simulator over HTTP with the real SDK, in the order a primed run sends
them (the primers' batch, then the readers'); billed is priced from each result's `usage`
(longbatch/cache.py). Expected is shown twice: with the documented default output share, and
with the share learnt from this run's results (what the next `longbatch plan` would say).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anthropic  # noqa: E402

from longbatch.cache import CachedUsage, batch_cost_usd, uncached_cost_usd  # noqa: E402
from longbatch.catalog import get_model  # noqa: E402
from longbatch.records import ResultRecord, UsageRecord  # noqa: E402
from simulator.engine import SimConfig  # noqa: E402
from simulator.server import SimulatorServer  # noqa: E402
from tasks.expected import expected_by_document, expected_costs, output_fractions  # noqa: E402
from tasks.ingest import read_document  # noqa: E402
from tasks.plan import make_plan  # noqa: E402
from tasks.prompts import load_prompt  # noqa: E402
from tasks.results import to_outcome  # noqa: E402


def run_batch(client: anthropic.Anthropic, requests: list) -> dict:
    batch = client.beta.messages.batches.create(requests=[r.as_request() for r in requests])
    while client.beta.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.2)
    with client.beta.messages.batches.with_streaming_response.results(batch.id) as resp:
        return {o.custom_id: o for o in (to_outcome(line) for line in resp.iter_lines() if line.strip())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    parser.add_argument("--cache", default="prime", choices=["prime", "auto", "off"])
    parser.add_argument("--max-output-tokens", type=int, default=4_000)
    args = parser.parse_args()
    inbox = args.corpus / "text"
    docs = [read_document(inbox / name, inbox) for name in ("sec_10k_apple.md", "udhr_article1_multilingual.txt")]
    prompts = [load_prompt("report", Path(".")), load_prompt("summary", Path("."))]
    risks = Path("/tmp/longbatch-bench-risks.md")
    risks.write_text("List every risk the document names, with page references.\n")
    prompts.append(load_prompt(str(risks), Path(".")))
    model = get_model("claude-sonnet-4-6")
    plan = make_plan(docs, prompts, model, args.max_output_tokens, 1_000, cache=args.cache)
    readers = {reader for reader, _ in plan.primers}
    first = [r for r in plan.requests if r.fingerprint not in readers]
    later = [r for r in plan.requests if r.fingerprint in readers]
    with SimulatorServer(SimConfig(processing_seconds=0.5, output_tokens=1_500)) as sim:
        client = anthropic.Anthropic(api_key="bench", base_url=sim.url, max_retries=2)
        outcomes = run_batch(client, first)
        if later:
            outcomes.update(run_batch(client, later))
    by_cid = {r.custom_id: r for r in plan.requests}
    records = [UsageRecord(ResultRecord("b", o.custom_id, by_cid[o.custom_id].fingerprint, 1, o.result_type,
                                        output_tokens=o.output_tokens), model.id, "", by_cid[o.custom_id].prompt,
                           max_tokens=by_cid[o.custom_id].max_tokens) for o in outcomes.values()]
    default = expected_by_document(plan, expected_costs(plan, {}))
    learnt = expected_by_document(plan, expected_costs(plan, output_fractions(records)))
    billed: dict[str, float] = {}
    uncached: dict[str, float] = {}
    for cid, o in outcomes.items():
        source = next(r.source for r in plan.rows if r.custom_id == cid)
        billed[source] = billed.get(source, 0.0) + batch_cost_usd(model, o.usage)
        uncached[source] = uncached.get(source, 0.0) + uncached_cost_usd(model, o.usage)
    print(f"cache={args.cache}, {len(first)} request(s) then {len(later)}; max_tokens {args.max_output_tokens:,}; "
          f"simulated output ~1,500 tokens")
    print(f"{'document':34} {'expected (default)':>19} {'expected (learnt)':>18} {'billed':>9} "
          f"{'learnt/billed':>13} {'uncached':>9} {'saved':>7}")
    sources = sorted(billed)
    for source in sources + ["total"]:
        pick = (lambda d: sum(v for (s, _), v in d.items() if s == source)) if source != "total" else \
            (lambda d: sum(d.values()))
        b = billed[source] if source != "total" else sum(billed.values())
        u = uncached[source] if source != "total" else sum(uncached.values())
        e0, e1 = pick(default), pick(learnt)
        print(f"{source:34} {e0:>19.4f} {e1:>18.4f} {b:>9.4f} {e1 / b:>13.3f} {u:>9.4f} {u - b:>7.4f}")
    reads = sum(o.cache_read_tokens for o in outcomes.values())
    total_in = sum(CachedUsage(o.input_tokens, 0, o.cache_creation_tokens, 0, o.cache_read_tokens).all_input
                   for o in outcomes.values())
    print(f"cache hit rate {reads / total_in:.1%} of all input tokens")


if __name__ == "__main__":
    main()
