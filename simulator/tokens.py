"""The simulator's own token rule, the stand-in for Claude's tokenizer.

It is deliberately *not* tiktoken: longbatch estimates locally with cl100k and must cope with
an authority that counts differently, as it must against the real API. The rule reads text as
runs of letters, digits, other scripts and punctuation, charges each by length, and scales
by tokenizer family (the 2026 family counts ~30 % more for the same text).
"""

from __future__ import annotations

import math
import re

from longbatch.catalog import TOK_2026

_PIECES = re.compile(
    r"(?P<latin>[A-Za-z]+)"
    r"|(?P<digits>[0-9]+)"
    r"|(?P<han>[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<newline>\n)"
    r"|(?P<other>[^\s])"
)

FAMILY_FACTOR = {TOK_2026: 1.30}

# A request's fixed cost: role markers and formatting around messages and system prompt.
REQUEST_OVERHEAD = 8


def count_text(text: str) -> int:
    """Base (claude-2025 family) tokens for a piece of text."""
    total = 0
    for m in _PIECES.finditer(text):
        kind = m.lastgroup
        n = m.end() - m.start()
        if kind == "latin":
            total += math.ceil(n / 5)
        elif kind == "digits":
            total += math.ceil(n / 3)
        elif kind == "han":
            total += 1
        elif kind == "word":  # Cyrillic, Greek, Arabic, Devanagari, accented runs ...
            total += math.ceil(n / 2)
        else:  # each newline and punctuation mark, one each (so counts add up over lines)
            total += 1
    return total


def family_factor(tokenizer: str) -> float:
    return FAMILY_FACTOR.get(tokenizer, 1.0)


def count_for_family(text: str, tokenizer: str) -> int:
    return math.ceil(count_text(text) * family_factor(tokenizer))
