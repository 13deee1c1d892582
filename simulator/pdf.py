"""How the simulator reads a PDF document block, as the real service does: each page becomes
its extracted text plus an image of the page, and both are counted.

Limits checked: base64 that decodes to a PDF, not encrypted, at most 600 pages on a 1M-token
window (100 below). Page images cost width x height / 750 tokens once scaled to at most 1568 px
on the long edge, capped at 1,600 (the most one image costs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from dataclasses import dataclass
from functools import lru_cache

PAGES_ON_1M_WINDOW = 600
PAGES_BELOW_1M_WINDOW = 100
MAX_IMAGE_TOKENS = 1_600
LONG_EDGE_PX = 1_568


class PdfBlockError(ValueError):
    """The block is not a PDF the service would accept (an invalid_request_error)."""


@dataclass(frozen=True)
class PdfContent:
    pages: tuple[str, ...]
    image_tokens: int

    def text(self, title: str) -> str:
        body = "\n\n".join(f"--- Page {i} ---\n{t}" for i, t in enumerate(self.pages, 1))
        return f'<document name="{title}" pages="{len(self.pages)}">\n{body}\n</document>'


def read_block(block: dict, window: int) -> PdfContent:
    source = block.get("source") or {}
    if source.get("type") != "base64" or source.get("media_type") != "application/pdf":
        raise PdfBlockError("document.source: only base64 application/pdf is simulated")
    try:
        data = base64.b64decode(source.get("data") or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PdfBlockError("document.source.data: not valid base64") from exc
    content = _read(hashlib.sha256(data).hexdigest(), data)
    limit = PAGES_ON_1M_WINDOW if window >= 1_000_000 else PAGES_BELOW_1M_WINDOW
    if len(content.pages) > limit:
        raise PdfBlockError(f"A maximum of {limit} PDF pages may be provided.")
    return content


@lru_cache(maxsize=64)
def _read(_digest: str, data: bytes) -> PdfContent:  # keyed by digest: count_tokens, then the batch
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise PdfBlockError("The PDF specified is encrypted or password protected.")
        pages, images = [], 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            w, h = abs(float(page.mediabox.width)), abs(float(page.mediabox.height))  # boxes may be flipped
            scale = LONG_EDGE_PX / max(w, h, 1.0)
            images += min(MAX_IMAGE_TOKENS, math.ceil(w * scale * h * scale / 750))
    except PdfReadError as exc:
        raise PdfBlockError("The PDF specified was not valid.") from exc
    return PdfContent(tuple(pages), images)
