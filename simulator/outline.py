"""The simulator's "model": a deterministic extractive outline of the document it was given.

It quotes the document's own sentences section by section, so a simulated report is visibly
about the right document, and its length is set by a token target, so tests can ask for
short reports or ones that run into max_tokens or the context window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from simulator.tokens import count_for_family, count_text, family_factor

LABEL = (
    "> **Simulated report.** Written by the longbatch simulator, not by Claude: an extractive "
    "outline quoting the document's own sentences, for testing the pipeline."
)

_DOC = re.compile(r"<document[^>]*>\n?(.*?)\n?</document>|<part_reports[^>]*>\n?(.*?)\n?</part_reports>", re.S)
_PAGE = re.compile(r"^--- Page (\d+) ---$", re.M)
_HEADING = re.compile(r"^#{1,3} +(.+)$", re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


def _sentences(body: str) -> list[str]:
    """Whole sentences of readable length, with line breaks from the layout folded away."""
    flat = " ".join(body.split())
    return [s for s in _SENTENCE_END.split(flat) if 20 <= len(s) <= 400 and s[-1] in ".!?。！？"]


def document_text(user_text: str) -> str:
    m = _DOC.search(user_text)
    if not m:
        return user_text
    return m.group(1) if m.group(1) is not None else m.group(2)


_NAME = re.compile(r'<document name="([^"]*)"|<part_reports document="([^"]*)"')


def document_name(user_text: str) -> str:
    m = _NAME.search(user_text)
    return (m.group(1) or m.group(2)) if m and (m.group(1) or m.group(2)) else "the document"


_PART_REPORT = re.compile(r'<part_report index="(\d+)" covers="([^"]*)">\n?(.*?)</part_report>', re.S)


def _sections(text: str) -> list[tuple[str, str]]:
    reports = _PART_REPORT.findall(text)
    if reports:  # combining part reports: one section per part
        return [(f"Part {i} ({covers})", body) for i, covers, body in reports]
    pages = _PAGE.split(text)
    if len(pages) > 1:  # ["", "1", page1, "2", page2, ...]
        return [(f"Page {pages[i]}", pages[i + 1]) for i in range(1, len(pages) - 1, 2)]
    heads = list(_HEADING.finditer(text))
    if len(heads) > 1:
        return [(h.group(1).strip()[:80], text[h.end(): nxt.start() if nxt else len(text)])
                for h, nxt in zip(heads, heads[1:] + [None])]
    size = 20_000  # characters: plain text is cut into parts of about 5 pages
    return [(f"Part {i // size + 1}", text[i: i + size]) for i in range(0, len(text), size)] or [("Part 1", "")]


END = "## End of outline"


def _lines(text: str, name: str) -> Iterator[str]:
    yield f"# Report on {name}"
    yield ""
    yield LABEL
    yield ""
    sections = _sections(text)
    yield f"The document has {len(sections)} sections and {len(text):,} characters."
    # Pass 1 quotes the first sentences of each section; later passes go deeper, so the
    # outline can grow to any length without repeating itself until the text runs out.
    for depth in range(0, 1000):
        wrote = False
        for name, body in sections:
            sentences = _sentences(body)
            chunk = sentences[depth * 3: depth * 3 + 3]
            if not chunk:
                continue
            wrote = True
            yield ""
            yield f"## {name}" + ("" if depth == 0 else f" (continued, pass {depth + 1})")
            for s in chunk:
                yield f"- {' '.join(s.split())}"
        if not wrote:
            break
    yield ""
    yield END


def generate(user_text: str, target_tokens: int, tokenizer: str, finish: bool = False) -> tuple[str, int, bool]:
    """(text, output tokens, reached_target). The text is cut once `target_tokens` is reached,
    mid-line if need be, as a real model stops at max_tokens; with `finish` (the model, not a
    limit, decides the length: stop reason end_turn) it ends on a whole line and closes the
    outline instead. Base counts add up over lines and words, so the budget is kept in base
    tokens and scaled by the family factor once."""
    budget = math.floor(target_tokens / family_factor(tokenizer))
    closing = count_text("\n" + END + "\n") if finish else 0
    out: list[str] = []
    used = 0
    reached = False
    text = document_text(user_text)
    for line in _lines(text, document_name(user_text)):
        cost = count_text(line + "\n")
        if finish and line != END and used + cost + closing > budget:
            while out and (out[-1].startswith("## ") or not out[-1].strip()):
                out.pop()  # no heading left without its list
            out.append("\n" + END + "\n")
            reached = True
            break
        if used + cost > budget:
            partial: list[str] = []
            for word in line.split(" "):
                c = count_text(word)
                if used + c > budget:
                    break
                partial.append(word)
                used += c
            out.append(" ".join(partial))
            reached = True
            break
        out.append(line + "\n")
        used += cost
    text = "".join(out)
    return text, count_for_family(text, tokenizer), reached
