"""What a plan decides by, besides the documents and prompts: one value, passed down whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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

    @property
    def model(self) -> ModelSpec:
        return self.budget.model

    def mode_for(self, doc: Document) -> PdfMode:
        """Native mode applies to PDFs only."""
        return "native" if self.pdf_mode == "native" and doc.kind == "pdf" else "text"
