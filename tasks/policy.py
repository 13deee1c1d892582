"""What a plan decides by, besides the documents and prompts: one value, passed down whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from longbatch.cache import readers_to_pay
from longbatch.catalog import ModelSpec
from longbatch.piece import PdfMode
from tasks.fit import OutputBudget
from tasks.ingest import Document


@dataclass(frozen=True)
class PlanPolicy:
    budget: OutputBudget  # output asked, the floor, the room a window leaves
    extra_betas: tuple[str, ...] = ()  # on every batch (see catalog.normalize_betas)
    pdf_mode: PdfMode = "text"
    # count_key -> count_tokens' input tokens, replacing the estimate for what they cover
    exact_counts: Mapping[str, int] = field(default_factory=dict)
    # Put a cache breakpoint after each document: several prompts read it (longbatch/cache.py).
    cache_prefixes: bool = False

    @property
    def model(self) -> ModelSpec:
        return self.budget.model

    def mode_for(self, doc: Document) -> PdfMode:
        """Native mode applies to PDFs only."""
        return "native" if self.pdf_mode == "native" and doc.kind == "pdf" else "text"


def shares_prefixes(cache: str, prompts: int) -> bool:
    """Breakpoints pay when enough prompts read a document: a cache write costs 2x the input
    (1 h TTL) and each later read (0.1x) earns back 0.9x, so from three prompts on
    (longbatch/cache.py: readers_to_pay). `cache` is Settings.cache."""
    return cache != "off" and prompts >= readers_to_pay()
