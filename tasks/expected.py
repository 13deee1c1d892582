"""Expected cost beside the worst case: what a plan will probably cost, not the most it can.

* Output: the share of its grant a request of this model and prompt used before (the mean of
  output_tokens / max_tokens over the ledger's billed results); DEFAULT_OUTPUT_FRACTION until
  there is history. A combining step's input is its parts' outputs: the same share of its bound.
* Input: the plan's estimate, priced by what the cache will do: the first request of a group
  sharing a document writes it (1 h: 2x), a primed reader reads it (0.1x), a reader sent beside
  the writer hits by chance (ASSUMED_IN_BATCH_HIT_RATE) and otherwise writes it too.
* Documents that do not fit (or failed) send nothing and count in neither figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from longbatch.cache import READ_MULTIPLIER, TTL, WRITE_MULTIPLIER
from longbatch.catalog import ALIASES, BATCH_DISCOUNT, BUILTIN_MODELS
from longbatch.records import PlanStatus, UsageRecord
from tasks.plan import Plan
from tasks.priming import ASSUMED_IN_BATCH_HIT_RATE, prefix_key

# Until a model and prompt have history: an assumption (a long report rarely fills a 300K grant),
# replaced by the ledger's figure as soon as one result of that model and prompt is billed.
# bench/expected_vs_billed.py measures how far either is from what was billed.
DEFAULT_OUTPUT_FRACTION = 0.35


def output_fractions(records: Iterable[UsageRecord]) -> dict[tuple[str, str], float]:
    """(model, prompt) -> mean share of the grant its billed results used."""
    shares: dict[tuple[str, str], list[float]] = {}
    for u in records:
        if u.result.result_type == "succeeded" and u.max_tokens:
            shares.setdefault((u.model, u.prompt), []).append(min(1.0, (u.result.output_tokens or 0) / u.max_tokens))
    return {key: sum(v) / len(v) for key, v in shares.items()}


def expected_costs(plan: Plan, fractions: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """custom_id -> expected dollars, for every request and combining step of the plan."""
    spec = BUILTIN_MODELS.get(ALIASES.get(plan.model, plan.model))
    if spec is None:
        return {}
    per_in, per_out = spec.input_usd_per_mtok / 1e6, spec.output_usd_per_mtok / 1e6
    primed = {reader for reader, _ in plan.primers}
    input_factor: dict[str, float] = {}  # custom_id -> price of its input as a multiple of the base
    writers: set[str] = set()
    for request in plan.requests:
        key = prefix_key(request)
        if key is None:
            input_factor[request.custom_id] = 1.0
        elif key not in writers:
            writers.add(key)
            input_factor[request.custom_id] = WRITE_MULTIPLIER[TTL]
        else:
            hit = 1.0 if request.fingerprint in primed else ASSUMED_IN_BATCH_HIT_RATE
            input_factor[request.custom_id] = hit * READ_MULTIPLIER + (1 - hit) * WRITE_MULTIPLIER[TTL]
    out = {}
    for row in plan.rows:
        if row.status != PlanStatus.READY or not row.custom_id or (row.is_document and row.parts):
            continue
        share = fractions.get((row.model, row.prompt), DEFAULT_OUTPUT_FRACTION)
        if row.piece.is_step:
            tokens_in, factor = share * row.est_input_tokens, 1.0
        else:
            tokens_in, factor = row.est_input_tokens, input_factor.get(row.custom_id, 1.0)
        out[row.custom_id] = (tokens_in * per_in * factor + share * row.granted_max_tokens * per_out) * BATCH_DISCOUNT
    return out


def expected_by_document(plan: Plan, costs: Mapping[str, float]) -> dict[tuple[str, str], float]:
    """(source, prompt) -> expected dollars of its requests and steps (a split document's parts included)."""
    totals: dict[tuple[str, str], float] = {}
    for row in plan.rows:
        if row.custom_id in costs:
            totals[(row.source, row.prompt)] = totals.get((row.source, row.prompt), 0.0) + costs[row.custom_id]
    return totals
