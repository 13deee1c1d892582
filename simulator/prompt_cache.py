"""The simulated service's prompt cache: what a request's `usage` says it wrote and read.

Like the real one (longbatch/cache.py cites the pages): the prefix is everything up to the last
`cache_control` breakpoint (system prompt, then message blocks), hashed per model; it is cached
only from the model's minimum length; an entry lives for its TTL (5 min or 1 h) from its last
use. A request finishing while an entry written by an *earlier batch* is alive reads it; one in
the *same batch* as the writer reads it only by chance (`in_batch_hit_rate`), since a batch runs
its requests concurrently and hits there are best effort. Reads and writes are reported as
`cache_read_input_tokens`, `cache_creation_input_tokens` and `cache_creation.ephemeral_*`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longbatch.cache import TTL_SECONDS, cache_facts
from longbatch.catalog import ModelSpec
from longbatch.fsutil import atomic_write_bytes


@dataclass
class Entry:
    written_at: float
    expires_at: float
    batch_id: str


@dataclass(frozen=True)
class Prefix:
    key: str  # sha256 of the model and the prefix's blocks, breakpoints left out
    params: dict[str, Any]  # system and messages up to the breakpoint, for counting its tokens
    ttl: str


def cached_prefix(params: dict[str, Any]) -> Prefix | None:
    """The prefix up to the last breakpoint of a request, or None if it sets none."""
    system = params.get("system")
    system_blocks = system if isinstance(system, list) else ([{"type": "text", "text": system}] if system else [])
    # Every block in prompt order, with where it sits: (message index or None for system, block).
    blocks: list[tuple[int | None, dict]] = [(None, b) for b in system_blocks if isinstance(b, dict)]
    for i, message in enumerate(params.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks += [(i, b) for b in content if isinstance(b, dict)]
        elif isinstance(content, str):
            blocks.append((i, {"type": "text", "text": content}))
    marked = [n for n, (_, b) in enumerate(blocks) if isinstance(b.get("cache_control"), dict)]
    if not marked:
        return None
    last = marked[-1]
    ttl = str(blocks[last][1]["cache_control"].get("ttl") or "5m")
    kept = [(where, {k: v for k, v in b.items() if k != "cache_control"}) for where, b in blocks[: last + 1]]
    prefix_system = [b for where, b in kept if where is None]
    messages: dict[int, list[dict]] = {}
    for where, b in kept:
        if where is not None:
            messages.setdefault(where, []).append(b)
    prefix_params = {"system": prefix_system,
                     "messages": [{"role": params["messages"][i].get("role", "user"), "content": content}
                                  for i, content in sorted(messages.items())]}
    text = json.dumps([params.get("model"), prefix_params], sort_keys=True, ensure_ascii=False)
    return Prefix(hashlib.sha256(text.encode()).hexdigest(), prefix_params, ttl if ttl in TTL_SECONDS else "5m")


class PromptCache:
    def __init__(self, in_batch_hit_rate: float, seed: int = 0, path: Path | None = None) -> None:
        self.in_batch_hit_rate = in_batch_hit_rate
        self.seed = seed
        self.path = path
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        if path is not None and path.exists():
            self._entries = {k: Entry(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}

    def usage(self, params: dict[str, Any], spec: ModelSpec, input_tokens: int, at: float, batch_id: str,
              custom_id: str, count: Any) -> dict[str, Any]:
        """The `usage` input fields of a request that finished at `at`: uncached input, writes by
        TTL and reads. `count(params, spec)` counts a prefix's tokens the way requests are counted."""
        prefix = cached_prefix(params)
        write = {"5m": 0, "1h": 0}
        read = 0
        if prefix is not None:
            tokens = min(input_tokens, count(prefix.params, spec))
            if tokens >= cache_facts(spec.id).min_tokens:
                if self._hit(prefix, at, batch_id, custom_id):
                    read = tokens
                else:
                    write[prefix.ttl] = tokens
        return {"input_tokens": input_tokens - read - write["5m"] - write["1h"],
                "cache_creation_input_tokens": write["5m"] + write["1h"],
                "cache_read_input_tokens": read,
                "cache_creation": {"ephemeral_5m_input_tokens": write["5m"], "ephemeral_1h_input_tokens": write["1h"]}}

    def _hit(self, prefix: Prefix, at: float, batch_id: str, custom_id: str) -> bool:
        """Read the entry if it is alive (refreshing its life), else write it."""
        ttl = TTL_SECONDS[prefix.ttl]
        with self._lock:
            entry = self._entries.get(prefix.key)
            alive = entry is not None and entry.written_at <= at < entry.expires_at
            if alive and entry.batch_id == batch_id:  # written by a request running beside this one
                alive = random.Random(f"{self.seed}:cache:{batch_id}:{custom_id}").random() < self.in_batch_hit_rate
            if alive:
                entry.expires_at = max(entry.expires_at, at + ttl)
            else:
                self._entries[prefix.key] = Entry(at, at + ttl, batch_id)
            return alive

    def save(self) -> None:
        """Keep the cache with the batches, so a restarted simulator remembers it."""
        if self.path is not None:
            with self._lock:
                data = {k: asdict(v) for k, v in self._entries.items()}
            atomic_write_bytes(self.path, json.dumps(data).encode())
