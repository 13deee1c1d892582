"""Stage 3b — batches: pack requests into batches the API accepts.

Limits per batch: 100,000 requests and 256 MB of request body. Requests with different beta
sets go to different batches (betas are a batch-level header).
"""

from __future__ import annotations

from dataclasses import dataclass

from longbatch.errors import RequestTooLargeError
from tasks.build import PlannedRequest

MAX_REQUESTS = 100_000
# The API's limit is 256 MB; 5 % headroom covers the envelope and any difference in how
# "MB" is counted.
MAX_BODY_BYTES = int(256_000_000 * 0.95)
_ENVELOPE = len(b'{"requests":[]}')


@dataclass(frozen=True)
class BatchPlan:
    betas: tuple[str, ...]
    requests: tuple[PlannedRequest, ...]

    @property
    def body_bytes(self) -> int:
        """Serialized size of the create body: the requests, commas between them, the envelope."""
        return _ENVELOPE + sum(r.body_bytes for r in self.requests) + max(len(self.requests) - 1, 0)


def pack(
    requests: list[PlannedRequest], max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BODY_BYTES
) -> list[BatchPlan]:
    """Greedy, in order, one beta set per batch. A single request over the byte limit is an
    error for that request (the caller reports it per document)."""
    groups: dict[tuple[str, ...], list[PlannedRequest]] = {}
    for req in requests:
        if req.body_bytes + _ENVELOPE > max_bytes:
            raise RequestTooLargeError(f"request {req.custom_id} alone is {req.body_bytes:,} bytes, over the batch limit")
        groups.setdefault(tuple(sorted(req.betas)), []).append(req)
    batches: list[BatchPlan] = []
    for betas, reqs in groups.items():
        current: list[PlannedRequest] = []
        ids: set[str] = set()
        size = _ENVELOPE
        for req in reqs:
            extra = req.body_bytes + (1 if current else 0)
            # A custom_id is unique per batch: a second request with the same one starts a new batch.
            if current and (len(current) >= max_requests or size + extra > max_bytes or req.custom_id in ids):
                batches.append(BatchPlan(betas, tuple(current)))
                current, ids, size, extra = [], set(), _ENVELOPE, req.body_bytes
            current.append(req)
            ids.add(req.custom_id)
            size += extra
        if current:
            batches.append(BatchPlan(betas, tuple(current)))
    return batches
