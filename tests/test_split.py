"""Splitting documents too long for one request, and planning the steps that combine them."""

from __future__ import annotations

import dataclasses
import re

import pytest

from longbatch.catalog import get_model
from longbatch.tokens import cl100k_count
from tasks.fit import WINDOW_MARGIN
from tasks.ingest import Document, read_document
from longbatch.piece import PieceKind
from tasks.plan import READY, make_plan
from tasks.prompts import load_prompts
from tasks.split import balanced_parts, part_body, split_units

SENTENCE_END = ".!?;:\"'”’)]。！？"


def text_doc(body: str, kind: str = "text") -> Document:
    return Document("doc-000000000000", "doc.txt", kind, "0" * 64, len(body), (body,), body, cl100k_count(body))


def pdf_doc(pages: list[str]) -> Document:
    body = "\n\n".join(f"--- Page {i} ---\n{text}" for i, text in enumerate(pages, 1))
    return Document("doc-000000000000", "doc.pdf", "pdf", "0" * 64, len(body), tuple(pages), body, cl100k_count(body))


def ends_cleanly(body: str, end: int) -> bool:
    """A cut at `end` falls after a paragraph or a whole sentence."""
    before = body[:end]
    return (end >= len(body.rstrip()) or re.search(r"\n[ \t]*\n\s*$", before) is not None
            or before.rstrip()[-1:] in SENTENCE_END)


def book(chapters: int, paragraphs: int, sentences: int) -> str:
    out = []
    for c in range(1, chapters + 1):
        out.append(f"CHAPTER {c}")
        for p in range(paragraphs):
            out.append(" ".join(f"In chapter {c}, paragraph {p}, sentence {s} tells of the harvest and the mill."
                                for s in range(sentences)))
    return "\n\n".join(out) + "\n"


def test_parts_cover_the_text_in_order_within_capacity_at_paragraphs():
    doc = text_doc(book(chapters=12, paragraphs=6, sentences=8))
    capacity = 2_000
    parts = balanced_parts(doc, split_units(doc, capacity), capacity)
    assert len(parts) > 3
    assert all(p.cl100k <= capacity and cl100k_count(part_body(doc, p)) <= capacity for p in parts)
    # Nothing lost, nothing repeated: the parts are consecutive spans of the whole body.
    assert parts[0].start == 0 and parts[-1].end == len(doc.body)
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
    assert all(ends_cleanly(doc.body, p.end) for p in parts)
    assert all(not p.hard_cut for p in parts)
    # The cut prefers a chapter heading once a part is mostly full.
    assert sum(part_body(doc, p).startswith("CHAPTER") for p in parts) >= len(parts) - 1
    assert parts[0].covers.startswith("lines 1–") and "CHAPTER 1" in parts[0].covers


def test_a_paragraph_larger_than_a_part_is_cut_between_sentences():
    giant = " ".join(f"Sentence number {i} is about the river and its banks." for i in range(3_000))
    doc = text_doc("Intro paragraph.\n\n" + giant + "\n\nClosing paragraph.")
    capacity = 5_000
    parts = balanced_parts(doc, split_units(doc, capacity), capacity)
    assert len(parts) >= 6
    for p in parts:
        assert p.cl100k <= capacity and not p.hard_cut
        assert ends_cleanly(doc.body, p.end)
        assert part_body(doc, p)[0].isupper()  # starts a sentence


def test_text_without_any_sentence_end_is_cut_at_whitespace_and_says_so():
    doc = text_doc(" ".join(f"cell{i}" for i in range(40_000)))  # a table dump: no full stops, no paragraphs
    parts = balanced_parts(doc, split_units(doc, 3_000), 3_000)
    assert len(parts) > 3 and all(p.hard_cut for p in parts)
    assert all(doc.body[p.end - 1].isspace() or p.end == len(doc.body) for p in parts)


def test_one_unbroken_run_of_characters_is_cut_and_nothing_is_lost():
    import random
    import string

    rng = random.Random(7)
    blob = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(400_000))  # minified data
    doc = text_doc(blob)
    parts = balanced_parts(doc, split_units(doc, 20_000), 20_000)
    assert len(parts) >= 5 and all(p.hard_cut for p in parts)
    assert "".join(doc.body[p.start:p.end] for p in parts) == blob
    assert all(cl100k_count(doc.body[p.start:p.end]) <= 20_000 for p in parts)


def test_pdf_parts_are_page_ranges():
    pages = [f"Page text {i}. " + "The board met and resolved the matter. " * 60 for i in range(1, 41)]
    doc = pdf_doc(pages)
    parts = balanced_parts(doc, split_units(doc, 4_000), 4_000)
    assert len(parts) > 2
    assert parts[0].first_page == 1 and parts[-1].last_page == 40
    assert all(b.first_page == a.last_page + 1 for a, b in zip(parts, parts[1:]))  # whole pages, no gaps
    assert all(part_body(doc, p).startswith(f"--- Page {p.first_page} ---") for p in parts)
    assert parts[1].covers == f"pages {parts[1].first_page}–{parts[1].last_page}"


def test_hostile_text_splits_without_losing_characters():
    # Mixed scripts, CRLF, form feeds, a marker-like string, nothing but punctuation.
    chunk = "第一回 甄士隐梦幻识通灵。\r\n\r\nΑλφα βήτα!\f\n\n[[not a marker]] ;;;;\n\n" + "。" * 300 + "\n\n"
    doc = text_doc(chunk * 400)
    parts = balanced_parts(doc, split_units(doc, 1_500), 1_500)
    joined = "".join(doc.body[p.start:p.end] for p in parts)
    assert joined == doc.body and all(p.cl100k <= 1_500 for p in parts)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return load_prompts(["report"], tmp_path_factory.mktemp("data"))


def test_plan_splits_only_what_does_not_fit(prompts):
    small = text_doc("A short memo. " * 100)
    big = text_doc(book(chapters=60, paragraphs=10, sentences=40))
    model = get_model("claude-sonnet-4-5")  # 200K window
    plan = make_plan([small, big], prompts, model, 16_000, 4_096)
    doc_rows = plan.document_rows
    assert [r.status for r in doc_rows] == [READY, READY]
    assert doc_rows[0].parts is None and doc_rows[0].custom_id
    big_row = doc_rows[1]
    part_rows = [r for r in plan.rows if r.piece.kind == PieceKind.PART]
    steps = [r for r in plan.rows if r.piece.is_step]
    assert all(r.status == READY for r in part_rows + steps)  # a kind apart from the status
    assert big_row.parts == len(part_rows) >= 2 and big_row.custom_id is None
    assert [r.part for r in part_rows] == [f"{i}/{len(part_rows)}" for i in range(1, len(part_rows) + 1)]
    assert steps[-1].part == "final" and steps[-1].reduction == big_row.reduction
    # Every part request fits with its grant; the combining step's worst case fits too.
    for r in part_rows:
        assert r.upper_input_tokens + r.granted_max_tokens + WINDOW_MARGIN <= model.context_window
        assert r.batch is not None
    for s in steps:
        assert s.upper_input_tokens + s.granted_max_tokens + WINDOW_MARGIN <= model.context_window
    # The document's row carries the cost of all its parts and steps; totals count it once.
    assert big_row.max_cost_usd == pytest.approx(sum(r.max_cost_usd for r in part_rows + steps), abs=1e-5)
    assert plan.max_cost_usd == pytest.approx(doc_rows[0].max_cost_usd + big_row.max_cost_usd, abs=1e-5)
    assert len(plan.requests) == 1 + len(part_rows)
    ids = [r.custom_id for r in plan.requests]
    assert len(set(ids)) == len(ids) and all(len(i) <= 64 for i in ids)


def test_many_parts_on_a_small_window_are_combined_in_levels(prompts, corpus):
    text = (corpus / "text/king_james_bible_full.txt").read_text(encoding="utf-8", errors="replace")
    doc = text_doc(text)
    model = get_model("claude-sonnet-4-5")  # 200K window, 64K final output
    # At least 16K per part report: one step cannot take all of them with a 64K output.
    plan = make_plan([doc], prompts, model, None, 16_000)
    steps = [r for r in plan.rows if r.piece.is_step]
    merges = [s for s in steps if s.part.startswith("merge")]
    assert merges and steps[-1].part == "final"
    final = plan.reductions[-1]
    assert final.piece.kind == PieceKind.FINAL and all(c.reduction for c in final.children)
    # Each merge step combines a run of consecutive parts; together they cover every part once.
    leaves = [c.fingerprint for n in plan.reductions if n.piece.kind == PieceKind.MERGE for c in n.children]
    assert leaves == [r.fingerprint for r in plan.requests]
    for s in steps:
        assert s.upper_input_tokens + s.granted_max_tokens + WINDOW_MARGIN <= model.context_window
    assert steps[-1].granted_max_tokens == model.max_batch_output


def test_same_split_plan_twice_gives_the_same_keys(prompts):
    doc = text_doc(book(chapters=60, paragraphs=10, sentences=40))
    model = get_model("claude-sonnet-4-5")
    a = make_plan([doc], prompts, model, 16_000, 4_096)
    b = make_plan([doc], prompts, model, 16_000, 4_096)
    assert [n.key for n in a.reductions] == [n.key for n in b.reductions]
    assert [r.fingerprint for r in a.requests] == [r.fingerprint for r in b.requests]
    c = make_plan([doc], prompts, model, 12_000, 4_096)  # a different grant is different work
    assert {n.key for n in c.reductions}.isdisjoint(n.key for n in a.reductions)


def test_a_part_is_rebuilt_identically_from_the_inbox(prompts, tmp_path):
    from longbatch.errors import NotRebuildable
    from longbatch.records import RequestRecord
    from tasks.rebuild import rebuild_request

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "book.md").write_text(book(chapters=60, paragraphs=10, sentences=40), encoding="utf-8")
    doc = read_document(inbox / "book.md", inbox)
    plan = make_plan([doc], prompts, get_model("claude-sonnet-4-5"), 16_000, 4_096)
    assert len(plan.requests) >= 2
    for req in plan.requests:
        record = RequestRecord(req.fingerprint, req.custom_id, req.doc_id, doc.source, doc.sha256, req.prompt,
                               req.model, req.max_tokens, req.betas, req.piece, req.links)
        assert rebuild_request(record, inbox, tmp_path).fingerprint == req.fingerprint
    (inbox / "book.md").write_text("changed", encoding="utf-8")
    with pytest.raises(NotRebuildable, match="changed since it was planned"):
        rebuild_request(record, inbox, tmp_path)


def test_a_window_too_small_for_any_part_is_refused_with_reasons(prompts):
    doc = text_doc(book(chapters=60, paragraphs=10, sentences=40))
    # A 70K window asked for 64K of output per step leaves no room for parts of useful size.
    model = dataclasses.replace(get_model("claude-sonnet-4-5"), context_window=70_000)
    plan = make_plan([doc], prompts, model, 64_000, 64_000)
    (row,) = plan.rows
    assert row.status == "does_not_fit" and "cannot be split" in row.reason and not plan.requests


def test_real_pdf_split_by_pages(prompts, corpus):
    doc = read_document(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", corpus / "pdf")
    assert isinstance(doc, Document)
    units = split_units(doc, 3_000)
    parts = balanced_parts(doc, units, 3_000)
    assert len(parts) >= 3 and parts[0].first_page == 1 and parts[-1].last_page == 14
    pages_seen = [n for p in parts for n in range(p.first_page, p.last_page + 1)]
    # A page larger than a part is shared by two parts; otherwise each page is in one part.
    assert sorted(set(pages_seen)) == list(range(1, 15))

