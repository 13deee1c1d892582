"""Exact input counts from `messages.count_tokens`, for the documents whose local estimate is
too close to a limit to decide their fit. Free but rate-limited: paced, and cached by what was
counted (model, document and prompt hashes) so nothing is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import anthropic

from longbatch.catalog import ModelSpec
from longbatch.transient import tolerate_transient
from tasks.build import count_key, count_params
from tasks.ingest import Document
from tasks.plan import Plan
from tasks.prompts import Prompt

log = logging.getLogger(__name__)


def count_near_limits(
    client: anthropic.Anthropic,
    plan: Plan,
    documents: Iterable[Document],
    prompts: list[Prompt],
    model: ModelSpec,
    cache: dict[str, int],
    per_minute: float,
    on_counted: Callable[[str, int], None] = lambda key, n: None,
    everything: bool = False,
) -> dict[str, int]:
    """count_tokens for every plan row that needs an exact count (or every ready or near row
    with `everything`); returns the cache with the new counts added."""
    wanted = {r.count_key for r in plan.rows if r.count_key and (r.needs_exact or everything)}
    todo = wanted - set(cache)
    if not todo:
        return cache
    interval = 60.0 / per_minute if per_minute > 0 else 0.0
    last = 0.0
    for doc in documents:  # one document at a time: the run holds no more than that
        for prompt in prompts:
            for native in (False, True):
                key = count_key(model.id, doc, prompt, native)
                if key not in todo:
                    continue
                wait = last + interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                last = time.monotonic()
                counted = _count(client, doc, prompt, model, native)
                if counted is not None:
                    cache[key] = counted
                    on_counted(key, counted)
    return cache


def _count(client: anthropic.Anthropic, doc: Document, prompt: Prompt, model: ModelSpec, native: bool) -> int | None:
    counted = tolerate_transient(
        lambda: client.messages.count_tokens(**count_params(doc, prompt, model, native)).input_tokens, None,
        f"{doc.source}: count_tokens failed; its fit is decided by the estimate this time", log)
    if counted is not None:
        log.info("%s (%s): %d input tokens by count_tokens", doc.source, prompt.name, counted)
    return counted
