"""What longbatch knows about each model: window, output limits, tokenizer family, prices.

This built-in table is the offline default (facts as published on the model pages in
November 2026). The simulator serves the same facts on its Models API, so the code that
reads them is exercised end to end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from longbatch.errors import UnknownModelError

OUTPUT_300K_BETA = "output-300k-2026-03-24"
OUTPUT_300K_MAX = 300_000
RETIRED_CONTEXT_1M_BETA = "context-1m-2025-08-07"

# Batches cost half the standard price, input and output alike.
BATCH_DISCOUNT = 0.5


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
    lifecycle: str = "active"  # active | deprecated | retired
    replacement: str | None = None

    @property
    def max_batch_output(self) -> int:
        """The most output one batch request may ask for."""
        return OUTPUT_300K_MAX if self.supports_300k else self.max_output

    def betas_for(self, max_tokens: int) -> tuple[str, ...]:
        """Beta headers a request with this max_tokens needs: the 300K one only above the standard max."""
        if max_tokens > self.max_output and self.supports_300k:
            return (OUTPUT_300K_BETA,)
        return ()


# Tokenizer families. "claude-2025" covers the 4.x models up to Sonnet/Opus 4.6; Opus 4.7
# introduced a tokenizer that yields about 30 % more tokens for the same text; newer
# generations are assumed to use it too (the safe assumption: it over-counts, never under).
TOK_2025 = "claude-2025"
TOK_2026 = "claude-2026"

_M = ModelSpec
BUILTIN_MODELS: dict[str, ModelSpec] = {
    m.id: m
    for m in [
        _M("claude-opus-4-6", "Claude Opus 4.6", 1_000_000, 128_000, True, TOK_2025, 5.0, 25.0),
        _M("claude-sonnet-4-6", "Claude Sonnet 4.6", 1_000_000, 128_000, True, TOK_2025, 3.0, 15.0),
        _M("claude-opus-4-7", "Claude Opus 4.7", 1_000_000, 128_000, True, TOK_2026, 5.0, 25.0),
        _M("claude-opus-4-8", "Claude Opus 4.8", 1_000_000, 128_000, True, TOK_2026, 5.0, 25.0),
        _M("claude-sonnet-5", "Claude Sonnet 5", 1_000_000, 128_000, True, TOK_2026, 2.0, 10.0),
        _M("claude-opus-5", "Claude Opus 5", 1_000_000, 128_000, True, TOK_2026, 5.0, 25.0),
        _M("claude-sonnet-5-5", "Claude Sonnet 5.5", 1_000_000, 128_000, True, TOK_2026, 2.0, 10.0),
        _M("claude-opus-5-5", "Claude Opus 5.5", 1_000_000, 128_000, True, TOK_2026, 4.0, 20.0),
        # 200K windows since 2026-04-30 (the context-1m beta was retired); no 300K output.
        _M("claude-sonnet-4-5", "Claude Sonnet 4.5", 200_000, 64_000, False, TOK_2025, 3.0, 15.0,
           "deprecated", "claude-sonnet-4-6"),
        _M("claude-sonnet-4-0", "Claude Sonnet 4", 200_000, 64_000, False, TOK_2025, 3.0, 15.0,
           "deprecated", "claude-sonnet-4-6"),
        _M("claude-haiku-4-5", "Claude Haiku 4.5", 200_000, 64_000, False, TOK_2025, 1.0, 5.0),
    ]
}

# Dated ids and aliases users still type.
ALIASES = {
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    "claude-sonnet-4-20250514": "claude-sonnet-4-0",
    "claude-sonnet-4": "claude-sonnet-4-0",
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
        raise UnknownModelError(
            f"Model {model_id!r} is retired and no longer answers; use {spec.replacement or DEFAULT_MODEL} instead."
        )
    return spec


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
