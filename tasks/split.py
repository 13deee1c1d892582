"""Stage 2b — splitting: cut a document too long for one request into consecutive parts.

Pure. A part boundary always falls between pages (PDF) or paragraphs (text), preferring a
heading; only a single page or paragraph larger than a whole part is cut inside, between
sentences; only a "sentence" larger than a whole part (a table dump with no full stop) is cut
at whitespace, and the part says so. Parts are spans of `Document.body`, so a part's text is
exactly the document's text and can be rebuilt from the file (`part_body`).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from longbatch.tokens import cl100k_count
from tasks.ingest import Document

_PAGE_MARK = re.compile(r"^--- Page (\d+) ---$", re.M)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# End of a sentence: terminal punctuation, optional closing quotes/brackets, then space; or a
# CJK full stop (no space follows those).
_SENTENCE_END = re.compile(r"(?<=[.!?;:])[\"'”’)\]]*\s+|(?<=[。！？；])[”’」』）]*")
_HEADING = re.compile(
    r"^(#{1,6} \S|(CHAPTER|Chapter|PART|Part|BOOK|Book|SECTION|Section|ARTICLE|Article|VOLUME|Volume|"
    r"SCHEDULE|Schedule|APPENDIX|Appendix|ANNEX|Annex|Item|ITEM)\b\s*[\dIVXLC]|第.{1,8}[回章节卷部篇])"
)
# Separators between units cost a token or two each when the part is one string again.
_JOIN_TOKENS = 2
# Cut before a heading once a part is this full, rather than fill it to the brim mid-section.
_HEADING_CUT_FILL = 0.85


@dataclass(frozen=True)
class Unit:
    start: int  # span in Document.body
    end: int
    cl100k: int
    heading: bool  # starts with a heading line
    hard_cut: bool = False  # cut at whitespace: no sentence boundary was small enough


@dataclass(frozen=True)
class Part:
    index: int  # 1-based
    count: int
    start: int  # span in Document.body
    end: int
    cl100k: int
    covers: str  # for people: "pages 12–40", "lines 1–5,230 (from “Chapter 3”)"
    first_page: int | None = None
    last_page: int | None = None
    hard_cut: bool = False


def split_units(doc: Document, capacity: int) -> list[Unit]:
    """The document as a sequence of pieces no part boundary falls inside, each at most
    `capacity` cl100k tokens."""
    text = doc.body
    if doc.kind == "pdf":
        spans = page_spans(doc)
    else:
        spans = _spans_between(text, 0, len(text), _PARAGRAPH_BREAK)
    units: list[Unit] = []
    for start, end in spans:
        units.extend(_fit_span(text, start, end, capacity))
    return units


def page_spans(doc: Document) -> list[tuple[int, int]]:
    """Each page of a PDF as its span of the body, page marker included."""
    marks = [m.start() for m in _PAGE_MARK.finditer(doc.body)] or [0]
    return list(zip(marks, marks[1:] + [len(doc.body)]))


def _spans_between(text: str, start: int, end: int, sep: re.Pattern[str]) -> list[tuple[int, int]]:
    """Spans of text[start:end] cut just after each match of `sep` (separators stay attached)."""
    spans, at = [], start
    for m in sep.finditer(text, start, end):
        if m.end() > at and m.end() < end:
            spans.append((at, m.end()))
            at = m.end()
    spans.append((at, end))
    return [(s, e) for s, e in spans if e > s]


def _fit_span(text: str, start: int, end: int, capacity: int, level: int = 0) -> list[Unit]:
    tokens = cl100k_count(text[start:end])
    heading = bool(_HEADING.match(text[start:start + 200].lstrip()))
    if tokens <= capacity:
        return [Unit(start, end, tokens, heading, level > 2)]
    # Too big to stay whole: paragraphs (inside a PDF page), then sentences, then words.
    seps = [_PARAGRAPH_BREAK, _SENTENCE_END, re.compile(r"\s+")]
    for depth in range(level, len(seps)):
        pieces = _spans_between(text, start, end, seps[depth])
        if len(pieces) > 1:
            return _group(text, pieces, capacity, depth + 1)
    # One unbroken run longer than a part (no whitespace at all): cut by characters.
    step = max(1, (end - start) * capacity // max(tokens, 1) // 2)
    return [Unit(s, min(s + step, end), cl100k_count(text[s:min(s + step, end)]), False, True)
            for s in range(start, end, step)]


def _group(text: str, pieces: list[tuple[int, int]], capacity: int, level: int) -> list[Unit]:
    """Merge small neighbouring pieces back into units up to `capacity` (fewer, bigger units
    keep more context together); split any piece that is itself too big."""
    out: list[Unit] = []
    for start, end in pieces:
        for unit in _fit_span(text, start, end, capacity, level):
            last = out[-1] if out else None
            if (last is not None and last.end == unit.start and not unit.heading
                    and last.cl100k + unit.cl100k + _JOIN_TOKENS <= capacity):
                out[-1] = Unit(last.start, unit.end, last.cl100k + unit.cl100k + _JOIN_TOKENS, last.heading,
                               last.hard_cut or unit.hard_cut)
            else:
                out.append(unit)
    return out


def pack_parts(doc: Document, units: list[Unit], capacity: int, target: int | None = None,
               max_units: int | None = None) -> list[Part]:
    """Consecutive units into parts of at most `capacity` cl100k tokens (and `max_units` units:
    pages, in native PDF mode). A part is closed once it would pass `target` (default:
    capacity), or early before a heading once it is mostly full."""
    target = min(target or capacity, capacity)
    groups: list[list[Unit]] = []
    size = 0
    for unit in units:
        cost = unit.cl100k + _JOIN_TOKENS
        full = groups and (size + cost > target or (max_units is not None and len(groups[-1]) >= max_units))
        heading_cut = groups and unit.heading and size >= target * _HEADING_CUT_FILL
        if not groups or full or heading_cut:
            groups.append([])
            size = 0
        groups[-1].append(unit)
        size += cost
    locator = Locator(doc)
    parts = []
    for i, group in enumerate(groups, 1):
        start, end = group[0].start, group[-1].end
        tokens = sum(u.cl100k + _JOIN_TOKENS for u in group)
        first, last = locator.page(start), locator.page(end - 1)
        parts.append(Part(i, len(groups), start, end, tokens, locator.covers(start, end), first, last,
                          any(u.hard_cut for u in group)))
    return parts


def balanced_parts(doc: Document, units: list[Unit], capacity: int, max_units: int | None = None) -> list[Part]:
    """As few parts as `pack_parts` needs at `capacity`, but of about equal size: filling each to
    the brim would leave a small last part and cut sections needlessly."""
    parts = pack_parts(doc, units, capacity, max_units=max_units)
    if len(parts) < 2:
        return parts
    even = sum(u.cl100k + _JOIN_TOKENS for u in units) / len(parts)
    if max_units is not None:  # a page limit may be what set the count: balance pages too
        max_units = min(max_units, math.ceil(len(units) / len(parts)))
    for slack in (1.0, 1.03, 1.06, 1.1, 1.15, 1.25):
        candidate = pack_parts(doc, units, capacity, int(even * slack) + 1, max_units)
        if len(candidate) <= len(parts):
            return candidate
    return parts


def part_body(doc: Document, part: Part) -> str:
    return doc.body[part.start: part.end].strip()


class Locator:
    """Page and line numbers of body offsets, for telling people what a part covers."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        marks = [(m.start(), int(m.group(1))) for m in _PAGE_MARK.finditer(doc.body)] if doc.kind == "pdf" else []
        self.mark_offsets = [offset for offset, _ in marks]
        self.mark_pages = [page for _, page in marks]
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", doc.body)]

    def page(self, offset: int) -> int | None:
        if not self.mark_pages:
            return None
        i = bisect.bisect_right(self.mark_offsets, offset) - 1
        return self.mark_pages[max(i, 0)]

    def covers(self, start: int, end: int) -> str:
        body = self.doc.body
        while end > start + 1 and body[end - 1].isspace():  # name the lines the text is on
            end -= 1
        while start < end - 1 and body[start].isspace():
            start += 1
        if self.mark_pages:
            first, last = self.page(start), self.page(end - 1)
            return f"page {first}" if first == last else f"pages {first}–{last}"
        first = bisect.bisect_right(self.line_starts, start)
        last = bisect.bisect_right(self.line_starts, end - 1)
        label = f"lines {first:,}–{last:,}"
        heading = next((line.strip() for line in self.doc.body[start:end].splitlines()[:400]
                        if _HEADING.match(line.strip())), None)
        return f"{label} (from “{heading[:60]}”)" if heading else label
