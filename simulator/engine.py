"""The simulated Message Batches service: state, validation and results, without HTTP.

It behaves like the real service where longbatch depends on it:
* creation checks the envelope (request count, custom_id format and uniqueness); the params
  of each request are validated asynchronously and a bad one comes back `errored`;
* `max_tokens` above the model's standard maximum needs the batch-level 300K beta, on a
  model that supports it; `betas` inside params is an error;
* input over the window is errored ("prompt is too long"); input + max_tokens over it stops
  early with `model_context_window_exceeded`;
* requests finish over a configurable processing time; cancel and the (scalable) 24 h
  expiry end the unfinished ones; results are JSONL, in an order that is not request order.

Markers in a document steer single requests, for tests: `[[simulate:refusal]]`,
`[[simulate:expired]]`, `[[simulate:error=TYPE]]`, `[[simulate:output_tokens=N]]`.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from longbatch.catalog import BUILTIN_MODELS
from longbatch.fsutil import atomic_write_bytes
from simulator.batch_store import BatchStore, SimBatch
from simulator import outline
from simulator.config import SimConfig
from simulator.prompt_cache import PromptCache
from simulator.tokens import count_for_family
from simulator.pdf import PdfBlockError
from simulator.requests import RequestRefused, check_request, count_request_tokens, echo_headers, resolve_model

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MARKER = re.compile(r"\[\[simulate:([a-z_]+)(?:=([A-Za-z0-9_]+))?\]\]")


class ApiError(Exception):
    """An HTTP error answer: status, the API's error type, and its message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


FAULT_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error", 500: "api_error", 503: "api_error", 529: "overloaded_error"}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._lock = threading.RLock()
        self._batches: dict[str, SimBatch] = {}
        self.create_log: list[tuple[str, list[str]]] = []  # (batch id, custom ids) per create
        self.faults: dict[str, int] = {}  # what was injected, by kind, for tests and logs
        self.count_calls = 0
        self.batch_betas: dict[str, tuple[str, ...]] = {}  # the anthropic-beta header of each create
        # One dice stream per endpoint (and one for drops): the n-th create meets the same fate
        # whatever the number of polls before it, so a seed gives a repeatable run.
        self._rngs: dict[str, random.Random] = {}
        self._echo_keys: dict[str, str] = {}  # batch id -> the key its create was sent with
        self.store = BatchStore(self.config.state_dir)
        for batch in self.store.load():
            self._batches[batch.id] = batch
            self.create_log.append((batch.id, batch.custom_ids))
        self.prompt_cache = PromptCache(self.config.cache_hit_rate_in_batch, self.config.seed,
                                        self.config.state_dir / "prompt_cache.json" if self.config.state_dir else None)

    # -- fault injection ---------------------------------------------------------------------

    def injected_fault(self, endpoint: str) -> ApiError | None:
        """An HTTP error to answer instead of doing the work, by the configured rate."""
        cfg = self.config
        if cfg.fault_rate <= 0 or (cfg.fault_endpoints and endpoint not in cfg.fault_endpoints):
            return None
        with self._lock:
            rng = self._dice(endpoint)
            if rng.random() >= cfg.fault_rate:
                return None
            status = rng.choice(cfg.fault_statuses)
            self._count(f"{endpoint}:{status}")
        return ApiError(status, FAULT_TYPES.get(status, "api_error"), f"simulated {status} fault")

    def drop_after_create(self) -> bool:
        with self._lock:
            rate = self.config.drop_after_create_rate
            if rate > 0 and self._dice("create:drop").random() < rate:
                self._count("create:dropped")
                return True
        return False

    def _dice(self, stream: str) -> random.Random:
        if stream not in self._rngs:
            self._rngs[stream] = random.Random(f"{self.config.seed}:{stream}")
        return self._rngs[stream]

    def _count(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    # -- batches -----------------------------------------------------------------------------

    def create(self, body: Any, betas: tuple[str, ...], api_key: str | None = None) -> dict[str, Any]:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "invalid_request_error", "requests: at least one request is required")
        if len(requests) > self.config.max_batch_requests:
            raise ApiError(400, "invalid_request_error",
                           f"requests: a batch holds at most {self.config.max_batch_requests:,} requests, got {len(requests):,}")
        seen: set[str] = set()
        for i, req in enumerate(requests):
            cid = req.get("custom_id") if isinstance(req, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
                raise ApiError(400, "invalid_request_error",
                               f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$, got {cid!r}")
            if cid in seen:
                raise ApiError(400, "invalid_request_error", f"requests.{i}.custom_id: duplicate custom_id {cid!r}")
            seen.add(cid)
            if not isinstance(req.get("params"), dict):
                raise ApiError(400, "invalid_request_error", f"requests.{i}.params: an object is required")
        batch = SimBatch(f"msgbatch_{uuid.uuid4().hex[:24]}", time.time(), tuple(betas), requests,
                         [r["custom_id"] for r in requests])
        self.store.spill(batch)
        with self._lock:
            self._batches[batch.id] = batch
            if self.config.echo_key_in_errors and api_key:
                self._echo_keys[batch.id] = api_key  # in memory only: never in the state dir's records
            self.create_log.append((batch.id, batch.custom_ids))
            self.batch_betas[batch.id] = batch.betas
            self.store.save(batch)
        return self._view(batch)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        batch = self._get(batch_id)
        if time.time() - batch.created_at < self.config.not_found_after_create_seconds:
            self._count("retrieve:404-after-create")
            raise ApiError(404, "not_found_error", f"message batch {batch_id!r} not found")
        return self._view(batch)

    def list(self, limit: int = 20, after_id: str | None = None, before_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            ordered = sorted(self._batches.values(), key=lambda b: b.created_at, reverse=True)
        ids = [b.id for b in ordered]
        if after_id in ids:
            ordered = ordered[ids.index(after_id) + 1:]
        elif before_id in ids:
            ordered = ordered[: ids.index(before_id)]
        page = ordered[: max(1, min(limit, 1000))]
        data = [self._view(b) for b in page]
        return {"data": data, "has_more": len(ordered) > len(page),
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self._get(batch_id)
        with self._lock:
            if batch.cancel_at is None and not self._ended(batch):
                batch.cancel_at = time.time()
                self.store.save(batch)
        return self._view(batch)

    def delete(self, batch_id: str) -> dict[str, Any]:
        batch = self._get(batch_id)
        if not self._ended(batch):
            raise ApiError(400, "invalid_request_error", "a batch can be deleted only once it has ended; cancel it first")
        with self._lock:
            del self._batches[batch_id]
            self.store.delete(batch_id)
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes:
        batch = self._get(batch_id)
        if not self._ended(batch):
            raise ApiError(400, "invalid_request_error", f"batch {batch_id} has not ended: no results yet")
        return self._results(batch)

    # -- other endpoints ---------------------------------------------------------------------

    def count_tokens(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "body: an object is required")
        spec = resolve_model(str(body.get("model")), self.config.model_overrides)
        if spec is None:
            raise ApiError(404, "not_found_error", f"model: {body.get('model')!r} not found")
        with self._lock:
            self.count_calls += 1
        try:
            return {"input_tokens": count_request_tokens(body, spec)}
        except PdfBlockError as exc:
            raise ApiError(400, "invalid_request_error", str(exc)) from exc

    def models(self) -> dict[str, Any]:
        data = [self.model(m) for m in BUILTIN_MODELS]
        return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}

    def model(self, model_id: str) -> dict[str, Any]:
        spec = resolve_model(model_id, self.config.model_overrides)
        if spec is None:
            raise ApiError(404, "not_found_error", f"model: {model_id!r} not found")
        return {"type": "model", "id": spec.id, "display_name": spec.display_name,
                "created_at": "2026-01-01T00:00:00Z", "max_input_tokens": spec.context_window,
                "max_tokens": spec.max_output, "lifecycle": spec.lifecycle}

    # -- internals ---------------------------------------------------------------------------

    def _get(self, batch_id: str) -> SimBatch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, "not_found_error", f"message batch {batch_id!r} not found")
        return batch

    def _end_time(self, batch: SimBatch) -> float:
        natural = batch.created_at + self.config.processing_seconds
        limit = batch.created_at + self.config.expiry_seconds
        stop = min(natural, limit)
        return min(stop, batch.cancel_at) if batch.cancel_at is not None else stop

    def _ended(self, batch: SimBatch) -> bool:
        return time.time() >= self._end_time(batch)

    def _view(self, batch: SimBatch) -> dict[str, Any]:
        ended = self._ended(batch)
        n = len(batch.custom_ids)
        if ended:
            self._results(batch)
            counts = {k: batch.counts.get(k, 0) for k in ("succeeded", "errored", "canceled", "expired")}
            counts["processing"] = 0
            status = "ended"
        else:
            counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
            status = "canceling" if batch.cancel_at is not None else "in_progress"
        return {
            "id": batch.id, "type": "message_batch", "processing_status": status,
            "request_counts": counts,
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + self.config.expiry_seconds),
            "ended_at": _iso(self._end_time(batch)) if ended else None,
            "cancel_initiated_at": _iso(batch.cancel_at),
            "archived_at": None,
            "results_url": f"/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def _results(self, batch: SimBatch) -> bytes:
        with self._lock:
            if batch.results is None:
                stored = self.store.results_path(batch)
                if stored and stored.exists():
                    batch.results = stored.read_bytes()
                    for line in batch.results.splitlines():
                        kind = json.loads(line)["result"]["type"]
                        batch.counts[kind] = batch.counts.get(kind, 0) + 1
                else:
                    batch.results = self._make_results(batch)
                    if stored:
                        atomic_write_bytes(stored, batch.results)
            return batch.results

    def _make_results(self, batch: SimBatch) -> bytes:
        n = len(batch.custom_ids)
        end = self._end_time(batch)
        lines = []
        # Request i finishes at an even share of the processing time; requests not finished
        # when the batch was cut (cancel, expiry) end canceled or expired.
        for i, req in enumerate(self.store.requests_of(batch)):
            done_at = batch.created_at + self.config.processing_seconds * (i + 1) / n
            if done_at > end + 1e-9:
                kind = "canceled" if batch.cancel_at is not None and batch.cancel_at <= end else "expired"
                result: dict[str, Any] = {"type": kind}
            else:
                result = (self._chance_outcome(batch.id, req["custom_id"])
                          or self._process(req["params"], batch.betas, (done_at, batch.id, req["custom_id"])))
            if result["type"] == "errored" and batch.id in self._echo_keys:
                result["error"]["error"]["message"] += echo_headers(self._echo_keys[batch.id])
            batch.counts[result["type"]] = batch.counts.get(result["type"], 0) + 1
            lines.append(json.dumps({"custom_id": req["custom_id"], "result": result}, ensure_ascii=False))
        # Results come back in any order: reverse pairs so no caller can rely on request order.
        self.prompt_cache.save()
        order = list(range(n))
        order[::2] = order[::2][::-1]
        return ("\n".join(lines[i] for i in order) + "\n").encode("utf-8")

    def _chance_outcome(self, batch_id: str, custom_id: str) -> dict[str, Any] | None:
        """Per-request errored/expired by rate, decided by a hash so a restart decides the same."""
        cfg = self.config
        if cfg.errored_rate <= 0 and cfg.expired_rate <= 0:
            return None
        roll = random.Random(f"{cfg.seed}:{batch_id}:{custom_id}").random()
        if roll < cfg.errored_rate:
            return {"type": "errored", "error": {"type": "error", "request_id": None, "error": {
                "type": "overloaded_error", "message": "simulated transient failure (errored_rate)"}}}
        if roll < cfg.errored_rate + cfg.expired_rate:
            return {"type": "expired"}
        return None

    def _process(self, params: dict[str, Any], betas: tuple[str, ...],
                 when: tuple[float, str, str] = (0.0, "", "")) -> dict[str, Any]:
        """One request's result; `when`: the time it finished, its batch and custom_id (for the cache)."""
        def errored(error_type: str, message: str) -> dict[str, Any]:
            return {"type": "errored", "error": {"type": "error", "error": {"type": error_type, "message": message},
                                                 "request_id": f"req_{uuid.uuid4().hex[:24]}"}}

        try:
            spec, text, input_tokens = check_request(params, betas, self.config.model_overrides)
        except RequestRefused as exc:
            return errored(exc.error_type, str(exc))
        max_tokens = params["max_tokens"]
        markers = {m.group(1): m.group(2) for m in MARKER.finditer(text)}
        if "error" in markers:
            return errored(markers["error"] or "api_error", "simulated failure requested by a [[simulate:error]] marker")
        if "expired" in markers:
            return {"type": "expired"}
        if input_tokens > spec.context_window:
            return errored("invalid_request_error",
                           f"prompt is too long: {input_tokens} tokens > {spec.context_window} maximum")
        room = spec.context_window - input_tokens
        target = int(markers.get("output_tokens") or self.config.output_tokens)
        if "refusal" in markers:
            body, stop = "I can't help with writing this report.", "refusal"
        else:
            cap = min(max_tokens, room)
            # Within the limits the simulated model ends its outline on its own (end_turn).
            body, _, cut = outline.generate(text, min(target, cap), spec.tokenizer, finish=target <= cap)
            if cut and target > cap:
                stop = "max_tokens" if max_tokens <= room else "model_context_window_exceeded"
            else:
                stop = "end_turn"
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": spec.id,
            "content": [{"type": "text", "text": body}], "stop_reason": stop, "stop_sequence": None,
            "usage": {**self.prompt_cache.usage(params, spec, input_tokens, *when, count_request_tokens),
                      "output_tokens": count_for_family(body, spec.tokenizer), "service_tier": "batch"},
        }
        return {"type": "succeeded", "message": message}
