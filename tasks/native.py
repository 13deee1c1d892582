"""Native PDF mode: the PDF itself goes to the model as a `document` content block (base64),
so tables, figures and layout are seen as the page shows them, not as extracted text.

The API turns each page into its extracted text plus an image of the page, so a page costs its
text tokens plus image tokens. Per request: at most 32 MB, and 600 pages on a 1M-token window
(100 pages below). A PDF over any limit is sent in page ranges, each written as its own PDF.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from pathlib import Path

from longbatch.catalog import ModelSpec
from longbatch.errors import PdfChangedError
from longbatch.tokens import estimate_tokens
from tasks.ingest import Document

MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Room kept in those 32 MB for the JSON around the base64 and the instructions.
REQUEST_BYTES_MARGIN = 64 * 1024
NATIVE_MAX_BYTES = MAX_REQUEST_BYTES - REQUEST_BYTES_MARGIN  # what one native request may take
PAGES_ON_1M_WINDOW = 600
PAGES_BELOW_1M_WINDOW = 100
# Image tokens per page: about width x height / 750 once scaled to at most 1568 px on the long
# edge, and an image over ~1,600 tokens is scaled down first (vision docs): so ~1,600 for a
# letter page, the estimate; the bound keeps 10 % over that cap.
PAGE_IMAGE_TOKENS = 1_600
PAGE_IMAGE_TOKENS_UPPER = 1_760


def page_limit(model: ModelSpec) -> int:
    return PAGES_ON_1M_WINDOW if model.context_window >= 1_000_000 else PAGES_BELOW_1M_WINDOW


@dataclass(frozen=True)
class PageCost:
    estimate: int
    upper: int


def page_costs(doc: Document, model: ModelSpec) -> list[PageCost]:
    """What each page costs as a document block: its text tokens plus its image."""
    return list(_page_costs(doc.pages, model.tokenizer))


@lru_cache(maxsize=1)  # a document's prompts, whole and split, are planned one after another
def _page_costs(pages: tuple[str, ...], tokenizer: str) -> tuple[PageCost, ...]:
    out = []
    for text in pages:
        est = estimate_tokens(text, tokenizer)
        out.append(PageCost(est.estimate + PAGE_IMAGE_TOKENS, est.upper + PAGE_IMAGE_TOKENS_UPPER))
    return tuple(out)


def pdf_for_pages(doc: Document, first: int, last: int) -> bytes:
    """Pages first..last (1-based) as a PDF to send. The whole file as it is when nothing
    needs changing; otherwise pages copied into a new, unencrypted PDF (the API refuses
    encrypted PDFs; an owner-restricted one was opened with the empty password at ingest)."""
    from pypdf import PdfWriter

    data, reader = _opened(doc)
    if len(reader.pages) != len(doc.pages):  # PDFium read the pages; pypdf writes the ranges
        raise PdfChangedError(f"{doc.source}: pypdf finds {len(reader.pages)} pages where PDFium read "
                              f"{len(doc.pages)}; native mode cannot cut it into page ranges: use text mode")
    if first == 1 and last == len(reader.pages) and not reader.is_encrypted:
        return data
    writer = PdfWriter()
    for page in reader.pages[first - 1: last]:
        writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)  # deterministic: the same pages give the same bytes (no /ID, no dates)
    return out.getvalue()


def _opened(doc: Document) -> tuple[bytes, Any]:
    return _open(doc.location, doc.sha256, doc.source)


@lru_cache(maxsize=2)
def _open(location: str, sha256: str, source: str) -> tuple[bytes, Any]:
    """The file as ingested (refused if it changed since: the plan would not match it) and a
    reader on it, kept while one document's page ranges are written: each range would otherwise
    parse the whole PDF again."""
    from pypdf import PdfReader

    try:
        data = Path(location).read_bytes()
    except OSError as exc:
        raise PdfChangedError(f"{source} can no longer be read ({exc.strerror}); run again") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PdfChangedError(f"{source} changed since it was read; run again to plan the new version")
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        reader.decrypt("")
    return data, reader


def document_block(pdf: bytes, title: str) -> dict:
    return {"type": "document", "title": title[:500],
            "source": {"type": "base64", "media_type": "application/pdf",
                       "data": base64.standard_b64encode(pdf).decode("ascii")}}


def identity_block(doc: Document, first: int, last: int, title: str) -> dict:
    """Stands in for the base64 in a request's fingerprint: the same pages of the same file are
    the same work, whatever bytes a pypdf version writes for them."""
    return {"type": "document", "title": title[:500], "source": {"type": "pages", "sha256": doc.sha256,
                                                                  "pages": [first, last]}}
