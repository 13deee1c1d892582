"""Prompt caching: the facts longbatch plans and bills by, and the money a cache saves.

Requests for the same document share a prefix (system prompt, then the document) and put a 1 h
`cache_control` breakpoint after it (`tasks/build.py`); the prompt comes after. Every figure here
is Anthropic's, with the page it is from:

* Writes cost 1.25x the base input price for the 5 min TTL and 2x for the 1 h TTL; reads cost
  0.1x. — https://platform.claude.com/docs/en/build-with-claude/prompt-caching (Pricing)
* These multipliers stack with the Batches API's 50 % discount; in batches cache hits are best
  effort, and the 1 h TTL is recommended because a batch can take longer than 5 minutes.
  — https://docs.claude.com/en/docs/build-with-claude/batch-processing (Pricing; prompt caching
  with Message Batches)
* A prefix shorter than the model's minimum cacheable length is not cached (no error: both
  cache counters stay 0). — prompt-caching page above, "Cache limitations"; the per-model
  figures are in `MIN_CACHEABLE_TOKENS`.

`cache_facts(model_id)` is the one way in, so these can later be read from the model catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from longbatch.catalog import ALIASES, BATCH_DISCOUNT, BUILTIN_MODELS, ModelSpec
from longbatch.records import ResultRecord

TTL = "1h"
BREAKPOINT = {"type": "ephemeral", "ttl": TTL}
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}

# Price of a cache write per TTL, and of a read, as multiples of the base input price.
# Source: platform.claude.com/docs/en/build-with-claude/prompt-caching (Pricing).
WRITE_MULTIPLIER = {"5m": 1.25, "1h": 2.0}
READ_MULTIPLIER = 0.1

# Minimum cacheable prompt length (tokens up to the breakpoint), per model.
# Source: platform.claude.com/docs/en/build-with-claude/prompt-caching ("Cache limitations"):
# 4,096 for Opus 4.6, Opus 4.5 and Haiku 4.5; 1,024 for Sonnet 4.6, Sonnet 4.5 and Sonnet 4
# (as quoted from that page in anthropics/anthropic-sdk-python#1194, which also reports Sonnet
# 4.6 caching only from 2,048 in practice). Later models, from the same page's 2026 revision as
# quoted by LiteLLM's prompt-caching docs: 2,048 for Opus 4.7, 1,024 for Opus 4.8 and Sonnet 5,
# 512 for Opus 5. Sonnet 5.5 and Opus 5.5 are not listed anywhere we could read: their
# generation's figures are assumed (DEFAULT_MIN_CACHEABLE_TOKENS).
MIN_CACHEABLE_TOKENS = {
    "claude-opus-4-6": 4_096,
    "claude-sonnet-4-6": 1_024,
    "claude-opus-4-7": 2_048,
    "claude-opus-4-8": 1_024,
    "claude-sonnet-5": 1_024,
    "claude-opus-5": 512,
    "claude-sonnet-4-5": 1_024,
    "claude-sonnet-4-0": 1_024,
    "claude-haiku-4-5": 4_096,
}
# An unlisted model: the largest minimum of any current model, so a breakpoint is never counted
# on where it may not hold (a breakpoint below the minimum costs nothing; it is just not cached).
DEFAULT_MIN_CACHEABLE_TOKENS = 4_096


def readers_to_pay() -> int:
    """The fewest requests sharing a prefix for which the 1 h cache costs less than none: one
    write (2x) and n - 1 reads (0.1x) against n plain reads. 3 (2.2x < 3x); with two the cache
    costs more (2.1x > 2x), even when every read hits."""
    n = 2
    while WRITE_MULTIPLIER[TTL] + READ_MULTIPLIER * (n - 1) >= n:
        n += 1
    return n


@dataclass(frozen=True)
class CacheFacts:
    min_tokens: int
    write_multiplier: dict[str, float]
    read_multiplier: float


def cache_facts(model_id: str) -> CacheFacts:
    """What caching costs on this model and from which prefix length it applies."""
    model_id = ALIASES.get(model_id, model_id)
    return CacheFacts(MIN_CACHEABLE_TOKENS.get(model_id, DEFAULT_MIN_CACHEABLE_TOKENS), WRITE_MULTIPLIER,
                      READ_MULTIPLIER)


@dataclass(frozen=True)
class CachedUsage:
    """A request's tokens by how they are billed (the `usage` of a succeeded message).
    `input_tokens` are the uncached ones; the writes are split by TTL as `usage.cache_creation`
    reports them (a write whose TTL the API did not say is counted at the 1 h rate, the higher)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def all_input(self) -> int:
        """Every input token, however billed: what the request would have paid for uncached."""
        return self.input_tokens + self.cache_write + self.cache_read

    @property
    def hit_rate(self) -> float:
        """The share of input read from the cache."""
        return self.cache_read / self.all_input if self.all_input else 0.0


def batch_cost_usd(spec: ModelSpec, usage: CachedUsage) -> float:
    """Dollars for one batch request from its usage: writes at their TTL's rate, reads at 0.1x,
    then the 50 % batch discount on all of it."""
    facts = cache_facts(spec.id)
    per_in = spec.input_usd_per_mtok / 1e6
    full = (usage.input_tokens * per_in
            + usage.cache_write_5m * per_in * facts.write_multiplier["5m"]
            + usage.cache_write_1h * per_in * facts.write_multiplier["1h"]
            + usage.cache_read * per_in * facts.read_multiplier
            + usage.output_tokens * spec.output_usd_per_mtok / 1e6)
    return full * BATCH_DISCOUNT


def write_premium_usd(spec: ModelSpec, tokens: int) -> float:
    """What writing `tokens` to the 1 h cache costs over sending them uncached, in a batch: the
    part of a cached request's worst case that its plain price leaves out."""
    return tokens * spec.input_usd_per_mtok / 1e6 * (WRITE_MULTIPLIER[TTL] - 1) * BATCH_DISCOUNT


def uncached_cost_usd(spec: ModelSpec, usage: CachedUsage) -> float:
    """What the same request would have cost in a batch with no caching at all."""
    return batch_cost_usd(spec, CachedUsage(usage.all_input, usage.output_tokens))


def saving_usd(spec: ModelSpec, usage: CachedUsage) -> float:
    """Money the cache saved on this request (negative when a write was never read back)."""
    return uncached_cost_usd(spec, usage) - batch_cost_usd(spec, usage)


def saving_from_billed(spec: ModelSpec, input_tokens: int, output_tokens: int, cache_write: int, cache_read: int,
                       billed_usd: float) -> float:
    """The saving of a recorded result: the uncached price of its tokens less what was billed
    (the ledger keeps the billed cost, computed at the right TTL rates when it was collected)."""
    return uncached_cost_usd(spec, CachedUsage(input_tokens + cache_write + cache_read, output_tokens)) - billed_usd


def cache_figures(model_id: str, results: Iterable[ResultRecord]) -> tuple[float | None, float]:
    """Hit rate (share of input read from the cache; None when nothing was billed) and dollars
    saved over the succeeded results of one model's requests."""
    spec = BUILTIN_MODELS.get(ALIASES.get(model_id, model_id))
    all_input = read = 0
    saved = 0.0
    for r in results:
        if r.result_type != "succeeded":
            continue  # not billed
        all_input += (r.input_tokens or 0) + (r.cache_creation_tokens or 0) + (r.cache_read_tokens or 0)
        read += r.cache_read_tokens or 0
        if spec is not None:
            saved += saving_from_billed(spec, r.input_tokens or 0, r.output_tokens or 0, r.cache_creation_tokens or 0,
                                        r.cache_read_tokens or 0, r.cost_usd or 0.0)
    return (read / all_input if all_input else None), saved
