"""What longbatch knows about each model: window, output limits, tokenizer family, prices,
lifecycle and the minimum cacheable prompt.

This built-in table is the offline default. Every fact was checked on 2026-11-24 against
Anthropic's pages, named beside each entry (URLs under https://platform.claude.com/docs/en/):

* MODEL   models/<id>/overview: window, max output, "Max output (Batch API, beta) 300K", price
          per MTok, status (Latest / Legacy / Deprecated) and dates;
* DEPR    about-claude/model-deprecations (and the release notes of 2026-06-15): retirements;
* CACHE   build-with-claude/prompt-caching, "minimum cacheable prompt length" per model;
* DESIGN  the project's contract (/work/shared/DESIGN.md), for platform facts it states: the
          300K output beta `output-300k-2026-03-24` for Opus/Sonnet 4.6 and later, not Haiku;
          Sonnet 4.5 / Sonnet 4 at 200K since 2026-04-30.

What could not be sourced is left out (None) and said so in the comment. Models left out of
the table on purpose: Claude Haiku 5.5 (its price is tiered by prompt length, $0.10/$0.50 up to
100K input tokens and $0.50/$2.50 above; the table holds one price per model), the Fable and
Mythos models (no batch output limit found), and models retired before 2026 (never in it).

The simulator serves the same facts on its Models API, so the code that reads them is
exercised end to end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from longbatch.errors import UnknownModelError

OUTPUT_300K_BETA = "output-300k-2026-03-24"
OUTPUT_300K_MAX = 300_000
RETIRED_CONTEXT_1M_BETA = "context-1m-2025-08-07"

# Batches cost half the standard price, input and output alike.
BATCH_DISCOUNT = 0.5
# A model retiring this close to today is named with its date and replacement at every run.
RETIREMENT_WARNING_DAYS = 30


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    context_window: int
    max_output: int  # standard max_tokens (Messages API, and batches without the beta)
    supports_300k: bool  # takes output-300k-2026-03-24 on the Batches API
    tokenizer: str  # family: token counts differ between families for the same text
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    lifecycle: str = "active"  # active (including "legacy") | deprecated | retired
    replacement: str | None = None
    retires_on: dt.date | None = None  # set once a retirement date is announced
    min_cache_tokens: int | None = None  # shortest prompt prefix the API caches; None: not sourced

    @property
    def max_batch_output(self) -> int:
        """The most output one batch request may ask for."""
        return OUTPUT_300K_MAX if self.supports_300k else self.max_output

    def betas_for(self, max_tokens: int) -> tuple[str, ...]:
        """Beta headers a request with this max_tokens needs: the 300K one only above the standard max."""
        if max_tokens > self.max_output and self.supports_300k:
            return (OUTPUT_300K_BETA,)
        return ()


# Tokenizer families. "claude-2025" covers the 4.x models up to Sonnet/Opus 4.6. Opus 4.7
# introduced a tokenizer that yields about 30 % more tokens for the same text; the Haiku 5.5
# page says it is "the same newer tokenizer as Claude 4.7 and later models", and the Sonnet 5
# page lists a new tokenizer at launch: every model from Opus 4.7 on is counted with it.
TOK_2025 = "claude-2025"
TOK_2026 = "claude-2026"

_M = ModelSpec
_RETIRED_2026_06_15 = dt.date(2026, 6, 15)
BUILTIN_MODELS: dict[str, ModelSpec] = {
    m.id: m
    for m in [
        # MODEL opus-5-5: "Latest", 1M, 128K, Batch API beta 300K, $4/$20. CACHE: no figure found.
        _M("claude-opus-5-5", "Claude Opus 5.5", 1_000_000, 128_000, True, TOK_2026, 4.0, 20.0),
        # MODEL sonnet-5-5: "Latest", 1M, 128K, $2/$10. 300K: DESIGN (Opus/Sonnet 4.6 and later); the
        # page excerpts found do not show its batch line. CACHE: no figure found.
        _M("claude-sonnet-5-5", "Claude Sonnet 5.5", 1_000_000, 128_000, True, TOK_2026, 2.0, 10.0),
        # MODEL opus-5: "Legacy" (active), released 2026-07-24, retirement "not sooner than
        # 2027-07-24"; 1M, 128K, Batch API beta 300K, $5/$25. CACHE: 512 (as quoted by secondary
        # sources; the official table's row for Opus 5 was not found).
        _M("claude-opus-5", "Claude Opus 5", 1_000_000, 128_000, True, TOK_2026, 5.0, 25.0, min_cache_tokens=512),
        # MODEL sonnet-5: "Legacy" (active), released 2026-06-30; 1M, 128K, Batch API beta 300K,
        # $2/$10, new tokenizer. CACHE: 1,024 (secondary sources, as for Opus 5).
        _M("claude-sonnet-5", "Claude Sonnet 5", 1_000_000, 128_000, True, TOK_2026, 2.0, 10.0,
           min_cache_tokens=1_024),
        # MODEL opus-4-8: "Legacy" (active), released 2026-05-28; 1M, 128K, $5/$25. 300K: DESIGN.
        # CACHE: 1,024 (secondary sources).
        _M("claude-opus-4-8", "Claude Opus 4.8", 1_000_000, 128_000, True, TOK_2026, 5.0, 25.0,
           min_cache_tokens=1_024),
        # Opus 4.7: released 2026-04-16, retirement not sooner than 2027-04-16 (Bedrock and Google
        # Cloud model cards); 1M, 128K, $5/$25 (unchanged from 4.6 per its launch coverage; its
        # own MODEL page was not in reach). 300K: DESIGN. Introduced the newer tokenizer.
        # CACHE: 2,048 (secondary sources).
        _M("claude-opus-4-7", "Claude Opus 4.7", 1_000_000, 128_000, True, TOK_2026, 5.0, 25.0,
           min_cache_tokens=2_048),
        # MODEL opus-4-6: "Legacy" (active), released 2026-02-05; 1M, 128K, $5/$25. 300K: DESIGN.
        # CACHE: 4,096 ("4096 tokens for Claude Opus 4.6, Claude Opus 4.5", the page as quoted in
        # anthropics/anthropic-sdk-python#1194).
        _M("claude-opus-4-6", "Claude Opus 4.6", 1_000_000, 128_000, True, TOK_2025, 5.0, 25.0,
           min_cache_tokens=4_096),
        # MODEL sonnet-4-6: "Legacy" (active), released 2026-02-17; 1M, 128K, $3/$15. 300K: DESIGN.
        # CACHE: 1,024 (same quote; one gateway's copy says 2,048: the official quote wins).
        _M("claude-sonnet-4-6", "Claude Sonnet 4.6", 1_000_000, 128_000, True, TOK_2025, 3.0, 15.0,
           min_cache_tokens=1_024),
        # MODEL sonnet-4-5 (claude-sonnet-4-5-20250929): "Deprecated ... retires on November 30,
        # 2026. Recommended replacement: Claude Sonnet 5.5"; 200K, 64K, $3/$15. 200K since
        # 2026-04-30 and no 300K output: DESIGN. CACHE: 1,024.
        _M("claude-sonnet-4-5", "Claude Sonnet 4.5", 200_000, 64_000, False, TOK_2025, 3.0, 15.0,
           "deprecated", "claude-sonnet-5-5", dt.date(2026, 11, 30), 1_024),
        # Haiku 4.5 (claude-haiku-4-5-20251001): 200K, 64K, $1/$5 (MODEL opus-5 and sonnet-5
        # pages' comparison tables); no 300K output (DESIGN: not Haiku). CACHE: 4,096.
        _M("claude-haiku-4-5", "Claude Haiku 4.5", 200_000, 64_000, False, TOK_2025, 1.0, 5.0,
           min_cache_tokens=4_096),
        # DEPR / release notes 2026-06-15: Claude Sonnet 4 and Claude Opus 4 retired on
        # 2026-06-15, "requests to those IDs now return errors"; recommended upgrades Sonnet 4.6
        # and Opus 4.8. Kept only to refuse them with the replacement named.
        _M("claude-sonnet-4-0", "Claude Sonnet 4", 200_000, 64_000, False, TOK_2025, 3.0, 15.0,
           "retired", "claude-sonnet-4-6", _RETIRED_2026_06_15),
        _M("claude-opus-4-0", "Claude Opus 4", 200_000, 32_000, False, TOK_2025, 15.0, 75.0,
           "retired", "claude-opus-4-8", _RETIRED_2026_06_15),
    ]
}

# Dated ids and aliases users still type.
ALIASES = {
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-sonnet-4-20250514": "claude-sonnet-4-0",
    "claude-sonnet-4": "claude-sonnet-4-0",
    "claude-opus-4-20250514": "claude-opus-4-0",
    "claude-opus-4": "claude-opus-4-0",
    "claude-haiku-4-5-20251001": "claude-haiku-4-5",
}

DEFAULT_MODEL = "claude-sonnet-4-6"


def normalize_betas(betas: Iterable[str]) -> tuple[tuple[str, ...], list[str]]:
    """Extra beta headers a user asked for, cleaned: (kept, warnings). The context-1m beta was
    retired on 2026-04-30 and is dropped; the 300K-output beta is added per batch by longbatch
    itself, only where a request needs it."""
    kept, warnings = set(), []
    for beta in (b.strip() for b in betas if b.strip()):
        if beta == RETIRED_CONTEXT_1M_BETA:
            warnings.append(f"dropped the {beta} beta: it was retired on 2026-04-30 (the 4.6 models and later "
                            "have 1M natively; Sonnet 4.5 and Sonnet 4 now have 200K)")
        elif beta == OUTPUT_300K_BETA:
            warnings.append(f"{beta} is added by longbatch to the batches that need it; no need to ask for it")
        else:
            kept.add(beta)
    return tuple(sorted(kept)), warnings


def get_model(model_id: str, catalog: dict[str, ModelSpec] | None = None) -> ModelSpec:
    """The spec of a model id (or alias); unknown ids are refused with the list of known ones.
    `catalog` is the built-in table unless a fresher one (from the Models API) is given."""
    catalog = catalog or BUILTIN_MODELS
    spec = catalog.get(ALIASES.get(model_id, model_id))
    if spec is None:
        known = ", ".join(sorted(catalog))
        raise UnknownModelError(f"Unknown model {model_id!r}. Known models: {known}.")
    if spec.lifecycle == "retired":
        when = f" on {spec.retires_on:%Y-%m-%d}" if spec.retires_on else ""
        raise UnknownModelError(
            f"Model {model_id!r} was retired{when} and no longer answers; use {spec.replacement or DEFAULT_MODEL} "
            "instead."
        )
    return spec


def retirement_warning(spec: ModelSpec, today: dt.date) -> str | None:
    """A warning for a model that retires within RETIREMENT_WARNING_DAYS of `today` (or whose
    announced date has passed while the table or the Models API still lists it), naming the
    date and the replacement; None otherwise. Pure: the flow passes today's date."""
    if spec.retires_on is None or spec.lifecycle == "retired":
        return None
    days = (spec.retires_on - today).days
    if days > RETIREMENT_WARNING_DAYS:
        return None
    instead = f"; use {spec.replacement} instead" if spec.replacement else ""
    if days < 0:
        return (f"{spec.id} was due to retire on {spec.retires_on:%Y-%m-%d}: the API may refuse every request "
                f"(nothing is billed for a refused request){instead}.")
    when = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
    return (f"{spec.id} retires on {spec.retires_on:%Y-%m-%d} ({when}); after that requests to it fail. "
            f"Batches can take up to 24 hours{instead} (--model).")


def refreshed_catalog(models: Iterable[Any]) -> dict[str, ModelSpec]:
    """The built-in table updated with what the Models API reports (`client.models.list()`):
    window (`max_input_tokens`), standard output limit (`max_tokens`) and lifecycle. Models the
    table does not know are left out: without their prices and tokenizer family longbatch
    cannot plan for them."""
    catalog = dict(BUILTIN_MODELS)
    for info in models:
        spec = catalog.get(ALIASES.get(info.id, info.id))
        if spec is None:
            continue
        catalog[spec.id] = dataclasses.replace(
            spec,
            context_window=info.max_input_tokens or spec.context_window,
            max_output=info.max_tokens or spec.max_output,
            lifecycle=getattr(info, "lifecycle", None) or spec.lifecycle,
        )
    return catalog


def batch_cost_usd(
    spec: ModelSpec,
    input_tokens: int,
    output_tokens: int,
    cache_creation_tokens: int = 0,
    cache_read_tokens: int = 0,
) -> float:
    """Dollars for one batch request: half the standard prices; cache writes at the 1 h rate (2x),
    cache reads at 0.1x."""
    per_in = spec.input_usd_per_mtok / 1e6
    per_out = spec.output_usd_per_mtok / 1e6
    full = (
        input_tokens * per_in
        + cache_creation_tokens * per_in * 2.0
        + cache_read_tokens * per_in * 0.1
        + output_tokens * per_out
    )
    return full * BATCH_DISCOUNT


def model_choices() -> list[str]:
    """The model ids a run form offers (the Prefect UI shows them as a list to pick from):
    the built-in catalogue's, without retired ones."""
    return [m.id for m in BUILTIN_MODELS.values() if m.lifecycle != "retired"]
