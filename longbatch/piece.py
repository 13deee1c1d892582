"""Which piece of a document a request is: the whole document, one part of a split document,
a step merging part reports, or the final combining step.

One typed value, from which everything that names a piece is derived: its custom_id suffix,
its report file's stem, its label in the plan, and the JSON kept in the ledger (the same keys
schema 4 wrote, so existing ledgers read back unchanged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

PdfMode = Literal["text", "native"]


class PieceKind(StrEnum):
    WHOLE = "whole"  # the whole document in one request
    PART = "part"  # one part of a document too long for one request
    MERGE = "merge"  # combines consecutive part reports, for a further step
    FINAL = "final"  # combines everything into the document's report


@dataclass(frozen=True)
class Span:
    """Where a part lies in `Document.body` (and its pages, for PDFs)."""
    start: int
    end: int
    first_page: int | None = None
    last_page: int | None = None
    hard_cut: bool = False  # cut at whitespace: no sentence boundary was small enough


@dataclass(frozen=True)
class Piece:
    kind: PieceKind = PieceKind.WHOLE
    index: int = 0  # part or merge step number, from 1; 0 for whole and final
    count: int = 0  # parts the document is read in (parts only)
    covers: str = ""  # for people: "pages 12–40", "lines 1–5,230 (from “Chapter 3”)"
    pdf_mode: PdfMode = "text"  # how the document's text reaches the model (steps: how the parts did)
    span: Span | None = None  # parts only
    reduction: str | None = None  # merge and final: the key of the step's recipe

    @property
    def is_step(self) -> bool:
        return self.kind in (PieceKind.MERGE, PieceKind.FINAL)

    @property
    def id_suffix(self) -> str | None:
        """The custom_id's last element: `p12` part 12, `m3` merge step 3, `f` the final step."""
        return {PieceKind.WHOLE: None, PieceKind.PART: f"p{self.index}", PieceKind.MERGE: f"m{self.index}",
                PieceKind.FINAL: "f"}[self.kind]

    def report_stem(self, prompt: str) -> str:
        """`<prompt>` for the document's report (whole or final); parts and merges beside it as
        `<prompt>.part-03` and `<prompt>.merge-01`."""
        if self.kind in (PieceKind.PART, PieceKind.MERGE):
            return f"{prompt}.{self.kind.value}-{self.index:02d}"
        return prompt

    @property
    def label(self) -> str:
        """As the plan shows it: "" (the whole document), "2/5", "merge 1", "final"."""
        return {PieceKind.WHOLE: "", PieceKind.PART: f"{self.index}/{self.count}",
                PieceKind.MERGE: f"merge {self.index}", PieceKind.FINAL: "final"}[self.kind]

    def to_meta(self) -> dict[str, Any] | None:
        """The ledger's `requests.meta` (and a report's `split`); None for a whole text request."""
        if self.kind == PieceKind.WHOLE:
            return None if self.pdf_mode == "text" else {"role": "whole", "pdf_mode": self.pdf_mode}
        if self.kind == PieceKind.PART:
            assert self.span is not None
            return {"role": "part", "index": self.index, "count": self.count, "covers": self.covers,
                    **asdict(self.span), "pdf_mode": self.pdf_mode}
        return {"role": self.kind.value, "index": self.index, "reduction": self.reduction, "covers": self.covers,
                "pdf_mode": self.pdf_mode}

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> Piece:
        if not meta:
            return cls()
        kind = PieceKind(meta["role"])
        span = (Span(meta["start"], meta["end"], meta.get("first_page"), meta.get("last_page"),
                     bool(meta.get("hard_cut"))) if kind == PieceKind.PART else None)
        return cls(kind, meta.get("index", 0), meta.get("count", 0), meta.get("covers", ""),
                   meta.get("pdf_mode", "text"), span, meta.get("reduction"))


@dataclass(frozen=True)
class ReportLink:
    """Where the report on one piece is: what a final report's JSON lists for each part."""
    covers: str
    custom_id: str
    fingerprint: str
    report: str | None
    batch_id: str | None = None
    message_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.batch_id is None and self.message_id is None:  # a step's child: where its report is
            del out["batch_id"], out["message_id"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportLink:
        return cls(d["covers"], d["custom_id"], d["fingerprint"], d.get("report"), d.get("batch_id"),
                   d.get("message_id"))


@dataclass(frozen=True)
class StepLinks:
    """What a combining step's request combined: its children's reports, every part of the
    document under it, and what each part of the whole document covered."""
    leaf_covers: tuple[str, ...]
    children: tuple[ReportLink, ...] = field(default=())
    parts: tuple[ReportLink, ...] = field(default=())

    def to_meta(self) -> dict[str, Any]:
        return {"leaf_covers": list(self.leaf_covers), "children": [c.as_dict() for c in self.children],
                "parts": [p.as_dict() for p in self.parts]}

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> StepLinks | None:
        if not meta or "leaf_covers" not in meta:
            return None
        return cls(tuple(meta["leaf_covers"]), tuple(ReportLink.from_dict(c) for c in meta.get("children", ())),
                   tuple(ReportLink.from_dict(p) for p in meta.get("parts", ())))


def stored_meta(piece: Piece, links: StepLinks | None) -> dict[str, Any] | None:
    """The JSON kept with a request: the piece, and for a combining step what it combined."""
    meta = piece.to_meta()
    if meta is not None and links is not None:
        meta.update(links.to_meta())
    return meta
