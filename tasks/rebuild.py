"""Stage 4a — the exact request behind queued work that this run did not plan itself: a retry,
work a crashed run left, or a combining step. Rebuilt from the inbox and the ledger, and checked
by its fingerprint: what is sent is what was claimed, or nothing and the reason why.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from longbatch.cache import readers_to_pay
from longbatch.catalog import get_model
from longbatch.errors import LongbatchError, NotReady, NotRebuildable
from longbatch.ledger import Ledger
from longbatch.piece import PieceKind
from longbatch.records import NOT_REBUILDABLE, RequestRecord, RequestState
from tasks.build import PlannedRequest, build_native_request, build_request
from tasks.ingest import Document, IngestFailure, find_source, read_document
from tasks.prompts import load_prompt
from tasks.reduce import build_reduce_request
from tasks.split import Part
from tasks.split_plan import part_request


# (path, inbox, native PDF) -> what the document reads as now
Reader = Callable[[Path, Path, bool], "Document | IngestFailure"]


def cached_reader(data_dir: Path, follow_links: bool = False) -> Reader:
    return lambda path, inbox, native: read_document(path, inbox, native, data_dir / "cache", follow_links)


def queued_requests(ledger: Ledger, inbox: Path, data_dir: Path, known: list[PlannedRequest] | None = None,
                    follow_links: bool = False) -> list[PlannedRequest]:
    """The exact requests behind the ledger's queued work: taken from `known` (this run's plan)
    where there, rebuilt otherwise (and kept lean: the text is rendered again when the batch is
    written). One whose document or prompt changed since it was planned cannot be rebuilt the
    same: it fails with the reason (the next `run` plans the new version)."""
    by_fp = {r.fingerprint: r for r in known or []}
    out: list[PlannedRequest] = []
    queued = ledger.requests_in_state(RequestState.QUEUED)
    readers = Counter(_prefix_key(r) for r in queued)
    read = functools.lru_cache(maxsize=1)(cached_reader(data_dir, follow_links))  # a document's prompts in a row
    for record in queued:
        try:
            out.append(by_fp.get(record.fingerprint)
                       or rebuild(ledger, record, inbox, data_dir,
                                  cache=readers[_prefix_key(record)] >= readers_to_pay() or record.primer is not None,
                                  read=read).lean())
        except NotRebuildable as exc:
            ledger.set_request_state([record.fingerprint], RequestState.FAILED, NOT_REBUILDABLE, str(exc),
                                     only_from=RequestState.QUEUED)  # unless a concurrent run sent it meanwhile
    return out


def _prefix_key(record: RequestRecord) -> tuple:
    """Requests with the same key send the same document text (the prompt comes after it)."""
    return (record.sha256, record.model, record.piece.kind, record.piece.index, record.piece.pdf_mode,
            record.piece.span, record.prompt if record.piece.is_step else "")


def rebuild(ledger: Ledger, record: RequestRecord, inbox: Path, data_dir: Path, cache: bool = False,
            read: Reader | None = None) -> PlannedRequest:
    """`cache`: other queued requests read the same document, so it gets a cache breakpoint
    (a breakpoint is not part of the fingerprint: either way it is the same work)."""
    if record.piece.is_step:
        return rebuild_step_request(ledger, record, data_dir)
    return rebuild_request(record, inbox, data_dir, cache, read)


def rebuild_step_request(ledger: Ledger, record: RequestRecord, data_dir: Path) -> PlannedRequest:
    """A combining step that was claimed but not sent."""
    step = ledger.reduction(record.piece.reduction or "")
    if step is None:
        raise NotRebuildable("its combining step is not in the ledger")
    try:
        request = build_reduce_request(ledger, step.recipe, data_dir)
    except (NotReady, LongbatchError) as exc:
        raise NotRebuildable(f"cannot rebuild the combining step: {exc}") from exc
    if request.fingerprint != record.fingerprint:
        raise NotRebuildable("the part reports it combines changed since it was built")
    return request


def rebuild_request(record: RequestRecord, inbox: Path, data_dir: Path, cache: bool = False,
                    read: Reader | None = None) -> PlannedRequest:
    """A whole document's or a part's request, from the document and prompt it was made from,
    read through the ingest cache (by default; `read` may remember the last document)."""
    path = find_source(inbox, record.source)  # a name with escaped bytes is looked up
    if not path.is_file():
        raise NotRebuildable(f"{record.source} is no longer in the inbox ({inbox})")
    piece = record.piece
    native = piece.pdf_mode == "native"
    doc = (read or cached_reader(data_dir))(path, inbox, native)
    if isinstance(doc, IngestFailure) or doc.sha256 != record.sha256:
        raise NotRebuildable(f"{record.source} changed since it was planned; `longbatch run` plans the new version")
    try:
        prompt, model = load_prompt(record.prompt, data_dir), get_model(record.model)
        if piece.kind == PieceKind.PART:
            assert piece.span is not None
            span = piece.span
            part = Part(piece.index, piece.count, span.start, span.end, 0, piece.covers, span.first_page,
                        span.last_page, span.hard_cut)
            request = part_request(doc, part, prompt, model, record.max_tokens, record.betas, native, cache)
        elif native:
            request = build_native_request(doc, prompt, model, record.max_tokens, record.betas, cache)
        else:
            request = build_request(doc, prompt, model, record.max_tokens, record.betas, cache)
    except LongbatchError as exc:
        raise NotRebuildable(f"cannot rebuild the request: {exc}") from exc
    if request.fingerprint != record.fingerprint:
        raise NotRebuildable(f"the prompt {record.prompt!r} changed since it was planned; `longbatch run` plans the "
                             "new version")
    return request
