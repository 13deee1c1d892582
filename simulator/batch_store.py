"""The simulator's batches and where they are kept: in memory only, or with a state dir on disk
(so they survive a restart, as `longbatch run --simulate` and `collect --simulate` need).

With a state dir a batch's requests are written once at create (`<id>.requests.jsonl`) and read
back only to make its results, so a simulator inside a run holds one batch body at a time, not
every one it was sent. Its state (`<id>.json`) and results (`<id>.results.jsonl`) sit beside.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longbatch.fsutil import atomic_write_bytes


@dataclass
class SimBatch:
    id: str
    created_at: float
    betas: tuple[str, ...]
    requests: list[dict[str, Any]] | None  # None once spilled to the state dir
    custom_ids: list[str]
    cancel_at: float | None = None
    results: bytes | None = None  # JSONL, made once the batch has ended
    counts: dict[str, int] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        state = {"id": self.id, "created_at": self.created_at, "betas": list(self.betas),
                 "custom_ids": self.custom_ids, "cancel_at": self.cancel_at}
        return state if self.requests is None else state | {"requests": self.requests}


class BatchStore:
    def __init__(self, state_dir: Path | None) -> None:
        self.state_dir = state_dir

    def results_path(self, batch: SimBatch) -> Path | None:
        return self.state_dir / f"{batch.id}.results.jsonl" if self.state_dir else None

    def requests_of(self, batch: SimBatch) -> list[dict[str, Any]]:
        """The batch's requests as they were sent (read back from the state dir once spilled)."""
        if batch.requests is not None:
            return batch.requests
        assert self.state_dir is not None
        with (self.state_dir / f"{batch.id}.requests.jsonl").open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    def spill(self, batch: SimBatch) -> None:
        """With a state dir: write the requests once, one per line, and let them go."""
        if self.state_dir is None or batch.requests is None:
            return
        path = self.state_dir / f"{batch.id}.requests.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for request in batch.requests:
                fh.write(json.dumps(request, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        batch.requests = None

    def save(self, batch: SimBatch) -> None:
        if self.state_dir:
            data = json.dumps(batch.to_state(), ensure_ascii=False).encode()
            atomic_write_bytes(self.state_dir / f"{batch.id}.json", data)

    def delete(self, batch_id: str) -> None:
        if self.state_dir:
            for suffix in (".json", ".results.jsonl", ".requests.jsonl"):
                (self.state_dir / f"{batch_id}{suffix}").unlink(missing_ok=True)

    def load(self) -> list[SimBatch]:
        if self.state_dir is None:
            return []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        batches = []
        for path in sorted(self.state_dir.glob("msgbatch_*.json")):
            state = json.loads(path.read_text(encoding="utf-8"))
            requests = state.get("requests")  # in the state file itself before requests were spilled
            ids = [r["custom_id"] for r in requests] if requests is not None else state["custom_ids"]
            batches.append(SimBatch(state["id"], state["created_at"], tuple(state["betas"]), requests, ids,
                                    state.get("cancel_at")))
        return batches
