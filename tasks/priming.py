"""Priming the prompt cache: of the requests that read the same document (several prompts),
one goes first and the others once it has ended, so they read the document from the cache
instead of hoping for a hit inside one batch (best effort there: 30-98 % is reported).

Exactly-once like everything else: the others are claimed `held` with their primer recorded
(the ledger's `requests.primer`), and each moves held -> queued by one conditional update once
the primer has ended, from whichever run or collect gets there first. A crash anywhere leaves
them held or queued, and the next round goes on from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from typing import TYPE_CHECKING

from longbatch.cache import READ_MULTIPLIER
from longbatch.catalog import BATCH_DISCOUNT, ModelSpec
from longbatch.ledger import Ledger
from longbatch.records import CANCELED_BY_USER, RequestState
from tasks.build import PlannedRequest, serialise, without_cache_control

if TYPE_CHECKING:
    from anthropic.types.beta.messages.batch_create_params import Request

# `--cache auto` primes when priming should save at least this much more per document than
# sending every prompt at once (hits inside one batch assumed at ASSUMED_IN_BATCH_HIT_RATE):
# below it, the wait for the primer's batch is not worth it.
PRIME_MIN_EXTRA_SAVING_USD = 0.10
ASSUMED_IN_BATCH_HIT_RATE = 0.5

PRIMER_CANCELED = "canceled by user: the request priming its document's cache was canceled"


def prefix_key(request: PlannedRequest) -> str | None:
    """What a request caches (tasks/build.py: prefix_of); None when it caches nothing."""
    return request.prefix


def extra_saving_usd(model: ModelSpec, prefix_tokens: int, readers: int) -> float:
    """What priming should save over one batch with best-effort hits: the reads that batch would miss."""
    per_token = model.input_usd_per_mtok / 1e6 * BATCH_DISCOUNT * (1 - READ_MULTIPLIER)
    return readers * prefix_tokens * (1 - ASSUMED_IN_BATCH_HIT_RATE) * per_token


def choose_primers(requests: Iterable[PlannedRequest], input_tokens: Mapping[str, int], model: ModelSpec,
                   mode: str) -> dict[str, str]:
    """fingerprint of each request that waits -> fingerprint of its primer (the first request of
    its group). `input_tokens`: custom_id -> the plan's input estimate; `mode`: Settings.cache."""
    if mode not in ("auto", "prime"):
        return {}
    groups: dict[str, list[PlannedRequest]] = {}
    for request in requests:
        key = prefix_key(request)
        if key is not None:
            groups.setdefault(key, []).append(request)
    out: dict[str, str] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        primer, *readers = group
        tokens = input_tokens.get(primer.custom_id, 0)
        if mode == "prime" or extra_saving_usd(model, tokens, len(readers)) >= PRIME_MIN_EXTRA_SAVING_USD:
            out.update({r.fingerprint: primer.fingerprint for r in readers})
    return out


def unprimed_without_breakpoints(ready: list[tuple[int, PlannedRequest]], primers: Mapping[str, str],
                                 mode: str) -> list[tuple[int, PlannedRequest]]:
    """`--cache auto` caches only what it primes. Sent side by side, the writer pays 2x and a
    reader that misses the cache writes it too: a reader costs 0.1h + 2(1 - h) of its input
    (h: the hit rate), so the group beats no cache only above h = 79 % for three prompts (53 %
    for very many), where 30-98 % is reported for batches. An unprimed group therefore loses its
    breakpoints (the fingerprint does not change)."""
    if mode != "auto":
        return ready
    primed = set(primers) | set(primers.values())
    return [(i, req if req.fingerprint in primed or not req.writes_cache else without_breakpoints(req))
            for i, req in ready]


def without_breakpoints(request: PlannedRequest) -> PlannedRequest:
    params = request.params
    assert params is not None, "breakpoints are dropped while planning, before a request is made lean"
    content = without_cache_control(params["messages"][0]["content"])
    plain: Request = {"custom_id": request.custom_id,
                      "params": {**params, "messages": [{"role": "user", "content": content}]}}
    line = serialise(plain)
    return dataclasses.replace(request, line=line, body_bytes=len(line), prefix=None)


def release_primed(ledger: Ledger) -> list[str]:
    """Held requests whose primer has ended go to the queue (whatever its outcome: a failed
    primer leaves them to write the cache themselves); those whose primer the user canceled are
    set aside with it. Returns the fingerprints queued."""
    released = []
    for fingerprint, primer_state, primer_error in ledger.held_with_primer_state():
        if primer_state == RequestState.FAILED and primer_error == CANCELED_BY_USER:
            ledger.release_held(fingerprint, RequestState.FAILED, CANCELED_BY_USER, PRIMER_CANCELED)
        elif primer_state in (None, RequestState.SUCCEEDED, RequestState.FAILED):
            if ledger.release_held(fingerprint, RequestState.QUEUED):
                released.append(fingerprint)
    return released
