"""Stage 4 — a batch's body, written when the batch is sent, one request at a time.

A run plans thousands of requests but keeps none of their text (`PlannedRequest.lean`). When a
batch is sent, each of its requests is rendered again from its document (read through the
ingest cache) and checked by its fingerprint (`tasks/rebuild.py`), then written as one line of
a spool file beside the ledger; the create call streams the body from that file. So memory holds
one document at a time, never a batch body (up to 256 MB) and never the inbox.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from longbatch.errors import NotRebuildable
from longbatch.ledger import Ledger
from longbatch.records import RequestRecord
from tasks.build import PlannedRequest
from tasks.rebuild import cached_reader, rebuild

_CHUNK = 1 << 20

# A request -> its line in the body (the SDK's JSON: compact, UTF-8); NotRebuildable when it
# cannot be rendered the same as it was planned.
Render = Callable[[PlannedRequest], bytes]


def render_planned(request: PlannedRequest) -> bytes:
    """A request that still holds its text: its line, as made when it was planned."""
    if request.line is None:
        raise NotRebuildable("it was made lean: render it from its document")
    return request.line


class Renderer:
    """Renders requests, lean or not: a lean one from the ledger's record of it and the
    document in the inbox. The last document read is remembered (a document's prompts are
    written one after another)."""

    def __init__(self, ledger: Ledger, inbox: Path, data_dir: Path, follow_links: bool = False) -> None:
        self.ledger, self.inbox, self.data_dir = ledger, inbox, data_dir
        self.read = functools.lru_cache(maxsize=1)(cached_reader(data_dir, follow_links))
        self.records: dict[str, RequestRecord] = {}

    def prepare(self, requests: list[PlannedRequest]) -> None:
        """Look up the ledger's records of these requests at once (one query per 500)."""
        lean = [r.fingerprint for r in requests if r.line is None and r.fingerprint not in self.records]
        self.records.update(self.ledger.requests_by_fingerprint(lean))

    def __call__(self, request: PlannedRequest) -> bytes:
        if request.line is not None:
            return render_planned(request)
        record = self.records.pop(request.fingerprint, None) or self.ledger.request(request.fingerprint)
        if record is None:
            raise NotRebuildable("it is not in the ledger")
        rebuilt = rebuild(self.ledger, record, self.inbox, self.data_dir, cache=request.writes_cache, read=self.read)
        if rebuilt.custom_id != request.custom_id:
            raise NotRebuildable(f"it rebuilt as {rebuilt.custom_id}, not {request.custom_id}")
        return render_planned(rebuilt)


@dataclass
class BatchBody:
    """The requests of one batch, serialized one per line in an unnamed temporary file (gone
    when closed, or when the process dies)."""

    file: IO[bytes]
    lines: dict[str, tuple[int, int]] = field(default_factory=dict)  # custom_id -> (offset, length)
    failed: dict[str, str] = field(default_factory=dict)  # fingerprint -> why it could not be rendered

    @classmethod
    def write(cls, requests: tuple[PlannedRequest, ...] | list[PlannedRequest], render: Render,
              spool_dir: Path | None) -> BatchBody:
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
        body = cls(tempfile.TemporaryFile(dir=spool_dir))  # noqa: SIM115 - closed by close()
        for request in requests:
            try:
                line = render(request)
            except NotRebuildable as exc:
                body.failed[request.fingerprint] = str(exc)
                continue
            body.lines[request.custom_id] = (body.file.tell(), len(line))
            body.file.write(line)
        body.file.flush()
        return body

    def size(self, custom_ids: list[str]) -> int:
        """Bytes of `{"requests":[...]}` holding these requests."""
        return len(b'{"requests":[]}') + sum(self.lines[c][1] for c in custom_ids) + max(len(custom_ids) - 1, 0)

    def stream(self, custom_ids: list[str]) -> Iterator[bytes]:
        """`{"requests":[...]}` with these requests, in pieces of at most 1 MB."""
        yield b'{"requests":['
        for i, cid in enumerate(custom_ids):
            if i:
                yield b","
            offset, left = self.lines[cid]
            self.file.seek(offset)
            while left:
                piece = self.file.read(min(_CHUNK, left))
                if not piece:
                    raise OSError(f"the spooled batch body ended early at {cid}")
                left -= len(piece)
                yield piece
        yield b"]}"

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> BatchBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
