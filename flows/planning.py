"""`longbatch plan`: ingest and plan without Prefect, and send nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from longbatch.catalog import ModelSpec, get_model
from longbatch.settings import Settings
from tasks.ingest import Document, IngestFailure, discover
from tasks.ingest_pool import read_documents
from tasks.plan import Plan, planner_for
from tasks.prompts import load_prompts

if TYPE_CHECKING:  # the SDK (~0.8 s to import) only when there is a client: `longbatch plan` with no key needs none
    import anthropic


def build_plan(settings: Settings, client: anthropic.Anthropic | None = None) -> tuple[Plan, ModelSpec]:
    """The plan `longbatch run` would make now. With a client, the model's facts come from the
    Models API and documents near a limit are counted exactly (count_tokens is free and sends
    no work)."""
    prompts = load_prompts(settings.prompts, settings.data_dir)
    inbox = settings.inbox_dir
    paths = discover(inbox, settings.follow_links)

    def documents() -> Iterator[Document | IngestFailure]:  # read one at a time, through the cache
        return read_documents(paths, inbox, settings.pdf_mode == "native", settings.data_dir / "cache",
                              follow_links=settings.follow_links)

    if client is None:
        model = get_model(settings.model)
        return planner_for(prompts, model, settings, keep_text_bytes=0).add(documents()).plan(), model
    from longbatch.api import model_from_api
    from tasks.counting import count_near_limits

    model = model_from_api(client, settings.model)
    plan = planner_for(prompts, model, settings, keep_text_bytes=0).add(documents()).plan()
    if settings.exact_count or any(r.needs_exact for r in plan.rows):
        docs = (d for d in documents() if isinstance(d, Document))
        counts = count_near_limits(client, plan, docs, prompts, model, {}, settings.count_tokens_per_minute,
                                   everything=settings.exact_count)
        plan = planner_for(prompts, model, settings, counts, keep_text_bytes=0).add(documents()).plan()
    return plan, model


def expected_for(plan: Plan, settings: Settings) -> tuple[dict[str, float], str]:
    """Expected dollars per request of the plan (tasks/expected.py), output shares learnt from
    the ledger when there is one; and a line saying where the output shares came from."""
    from longbatch.ledger import Ledger
    from tasks.expected import DEFAULT_OUTPUT_FRACTION, expected_costs, output_fractions

    ledger = Ledger.existing(settings)
    fractions = {}
    if ledger is not None:
        try:
            fractions = output_fractions(ledger.usage_rows())
        finally:
            ledger.close()
    learnt = sorted({f"{prompt} {share:.0%}" for (model, prompt), share in fractions.items() if model == plan.model})
    note = (f"output at the share of the grant used before ({', '.join(learnt)}; others "
            f"{DEFAULT_OUTPUT_FRACTION:.0%})" if learnt else
            f"output at {DEFAULT_OUTPUT_FRACTION:.0%} of the grant (no history yet for {plan.model})")
    return expected_costs(plan, fractions), note
