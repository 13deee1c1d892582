"""Native PDF mode: the PDF itself as a document block, within the per-request limits."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from pypdf import PdfReader, PdfWriter

from flows.process import RunParameters, process_documents
from longbatch.catalog import get_model
from simulator.engine import SimConfig
from simulator.server import SimulatorServer
from tasks.build import count_params
from tasks.ingest import Document, read_document
from longbatch.piece import Piece, PieceKind
from longbatch.records import RequestRecord
from tasks.plan import FAILED, READY, make_plan
from tasks.rebuild import rebuild_request
from tasks.prompts import load_prompts


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return load_prompts(["report"], tmp_path_factory.mktemp("data"))


def ingest(path: Path) -> Document:
    doc = read_document(path, path.parent)
    assert isinstance(doc, Document), doc
    return doc


def sent_pdf(block: dict) -> PdfReader:
    assert block["type"] == "document" and block["source"]["media_type"] == "application/pdf"
    return PdfReader(io.BytesIO(base64.b64decode(block["source"]["data"])))


def doubled(src: Path, dest: Path) -> Path:
    """A real PDF with every page twice: long enough to pass a page limit, quick to read."""
    reader = PdfReader(src)
    writer = PdfWriter()
    for page in list(reader.pages) * 2:
        writer.add_page(page)
    with dest.open("wb") as f:
        writer.write(f)
    return dest


def test_a_pdf_within_the_limits_is_sent_as_the_file_itself(prompts, corpus, client):
    doc = ingest(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf")
    model = get_model("claude-sonnet-4-6")
    plan = make_plan([doc], prompts, model, 20_000, 4_096, pdf_mode="native")
    (row,) = plan.rows
    (req,) = plan.requests
    assert row.status == READY and req.piece == Piece(PieceKind.WHOLE, pdf_mode="native")
    block, text = req.params["messages"][0]["content"]
    data = base64.b64decode(block["source"]["data"])
    assert hashlib.sha256(data).hexdigest() == doc.sha256  # the very file, not a rewrite
    assert "14 pages" in text["text"] and "Structure:" in text["text"]
    # Same document, same plan: same fingerprint (so a rerun sends nothing again).
    assert make_plan([doc], prompts, model, 20_000, 4_096, pdf_mode="native").requests[0].fingerprint == req.fingerprint
    assert make_plan([doc], prompts, model, 20_000, 4_096).requests[0].fingerprint != req.fingerprint  # text mode
    # The service's count (text and page images) lies between the estimate's bounds.
    counted = client.messages.count_tokens(**count_params(doc, prompts[0], model, native=True)).input_tokens
    assert row.est_input_tokens * 0.8 <= counted <= row.upper_input_tokens


def test_an_encrypted_pdf_is_sent_as_an_unencrypted_copy(prompts, corpus, client):
    doc = ingest(corpus / "pdf/enc_owner_restricted_rc4_dmca_18p.pdf")  # RC4, empty user password
    model = get_model("claude-sonnet-4-6")
    (req,) = make_plan([doc], prompts, model, 20_000, 4_096, pdf_mode="native").requests
    reader = sent_pdf(req.params["messages"][0]["content"][0])
    assert not reader.is_encrypted and len(reader.pages) == 18
    assert client.messages.count_tokens(**count_params(doc, prompts[0], model, native=True)).input_tokens > 18 * 1_000


@pytest.mark.parametrize(("model_id", "limit"), [("claude-sonnet-4-6", 600), ("claude-sonnet-4-5", 100)])
def test_more_pages_than_a_request_takes_go_in_page_ranges(model_id, limit, prompts, corpus, tmp_path):
    doc = ingest(doubled(corpus / "pdf/long_irs_irm_2.3.59_400p.pdf", tmp_path / "irm-twice.pdf"))
    assert len(doc.pages) == 800
    model = get_model(model_id)
    plan = make_plan([doc], prompts, model, None, 4_096, pdf_mode="native")
    parts = [r for r in plan.rows if r.piece.kind == PieceKind.PART]
    assert plan.rows[0].status == READY and plan.rows[0].parts == len(parts) >= 800 // limit + 1
    first = 1
    for row, req in zip(parts, plan.requests):
        reader = sent_pdf(req.params["messages"][0]["content"][0])
        assert len(reader.pages) == row.pages <= limit
        assert row.covers == f"pages {first}–{first + row.pages - 1}"  # contiguous, whole pages
        assert req.body_bytes <= 32 * 2**20
        assert row.upper_input_tokens + row.granted_max_tokens <= model.context_window
        first += row.pages
    assert first == 801


def test_a_pdf_that_changed_after_reading_is_refused_not_misplanned(prompts, corpus, tmp_path):
    path = tmp_path / "paper.pdf"
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", path)
    doc = ingest(path)
    path.write_bytes(path.read_bytes() + b"\n%changed\n")
    (row,) = make_plan([doc], prompts, get_model("claude-sonnet-4-6"), None, 4_096, pdf_mode="native").rows
    assert row.status == FAILED and "changed since it was read" in row.reason


def test_native_requests_rebuild_identically_from_the_inbox(prompts, corpus, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    doubled(corpus / "pdf/long_who_hcv_guidelines_2022_155p.pdf", inbox / "who-twice.pdf")  # 310 pages
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", inbox / "paper.pdf")
    docs = [ingest(p) for p in sorted(inbox.iterdir())]
    plan = make_plan(docs, prompts, get_model("claude-sonnet-4-5"), None, 4_096, pdf_mode="native")
    assert len(plan.requests) >= 5  # the paper whole, the 310 pages in at least 4 ranges
    for req in plan.requests:
        doc = next(d for d in docs if d.doc_id == req.doc_id)
        record = RequestRecord(req.fingerprint, req.custom_id, req.doc_id, doc.source, doc.sha256, req.prompt,
                               req.model, req.max_tokens, req.betas, req.piece, req.links)
        again = rebuild_request(record, inbox, tmp_path)
        assert again.fingerprint == req.fingerprint and again.params == req.params


def test_the_simulator_refuses_what_the_service_refuses(client, corpus):
    pdf = (corpus / "pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf").read_bytes()

    def block(data: bytes) -> dict:
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                               "data": base64.b64encode(data).decode()}}

    import anthropic

    for data, message in [(pdf, "encrypted"), (b"not a pdf at all", "not valid")]:
        with pytest.raises(anthropic.BadRequestError, match=message):
            client.messages.count_tokens(model="claude-sonnet-4-6",
                                         messages=[{"role": "user", "content": [block(data), {"type": "text",
                                                                                              "text": "Report."}]}])


def test_a_long_real_pdf_goes_through_text_and_native_mode(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    reports = {}
    with SimulatorServer(SimConfig(processing_seconds=0.3, output_tokens=500)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-native-test")
        for mode in ("text", "native"):
            data_dir = tmp_path / mode
            (data_dir / "inbox").mkdir(parents=True)
            shutil.copy(corpus / "pdf/long_who_hcv_guidelines_2022_155p.pdf", data_dir / "inbox" / "who.pdf")
            # Sonnet 4.5: a 200K window, so native requests take at most 100 pages.
            process_documents(RunParameters(data_dir=str(data_dir), model="claude-sonnet-4-5", pdf_mode=mode,
                                            max_output_tokens=8_000))
            row = pd.read_csv(data_dir / "reports" / "summary.csv").iloc[0]
            assert row["status"] == "complete", row["reason"]
            reports[mode] = (row, data_dir / row["report"])
        results = [json_line for batch, _ in server.sim.create_log
                   for json_line in server.sim.results(batch).decode().splitlines()]
    assert all('"succeeded"' in line for line in results)  # no page-limit or size refusal anywhere
    text_row, text_md = reports["text"]
    native_row, native_md = reports["native"]
    assert pd.isna(text_row["parts"])  # ~100K tokens of text fit one request
    assert native_row["parts"] >= 2  # 155 pages > 100: page ranges, then one combined report
    assert "> - Part 1: pages 1–" in native_md.read_text()
    # Native input counts the page images: more tokens than the text alone.
    assert native_row["input_tokens"] > text_row["input_tokens"]
    import json

    assert json.loads(native_md.with_suffix(".json").read_text())["pdf_mode"] == "native"
    assert json.loads(text_md.with_suffix(".json").read_text())["pdf_mode"] == "text"


def test_a_scan_without_text_is_refused_as_text_but_read_natively(prompts, corpus, client):
    path = corpus / "pdf/scanned_image_only_ccitt_irs_i1040nr_24p.pdf"
    as_text = read_document(path, path.parent)
    assert not isinstance(as_text, Document) and as_text.category == "no_text" and "OCR" in as_text.reason
    doc = read_document(path, path.parent, native_pdf=True)
    assert isinstance(doc, Document) and len(doc.pages) == 24
    assert any("reads the page images" in note for note in doc.notes)
    model = get_model("claude-sonnet-4-6")
    (row,) = make_plan([doc], prompts, model, 8_000, 4_096, pdf_mode="native").rows
    assert row.status == READY and row.est_input_tokens >= 24 * 1_600
    counted = client.messages.count_tokens(**count_params(doc, prompts[0], model, native=True)).input_tokens
    assert counted <= row.upper_input_tokens and counted >= 24 * 1_000  # the page images are what it costs


def test_a_pdf_over_the_request_size_goes_in_smaller_page_ranges(prompts, corpus, monkeypatch):
    import tasks.plan
    import tasks.split_plan

    # The 32 MB limit scaled down to this 1 MB paper (page 11 alone is 0.67 MB: a heavy figure):
    # the same rule at a size a test can hold.
    for module in (tasks.plan, tasks.split_plan):
        monkeypatch.setattr(module, "NATIVE_MAX_BYTES", 1_000_000)
    doc = ingest(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf")
    plan = make_plan([doc], prompts, get_model("claude-sonnet-4-6"), 8_000, 4_096, pdf_mode="native")
    parts = [r for r in plan.rows if r.piece.kind == PieceKind.PART]
    assert plan.rows[0].status == READY and len(parts) >= 3
    assert all(req.body_bytes <= 1_000_000 for req in plan.requests)
    assert sum(r.pages for r in parts) == 14 and parts[0].covers.startswith("pages 1–")
    for module in (tasks.plan, tasks.split_plan):
        monkeypatch.setattr(module, "NATIVE_MAX_BYTES", 400_000)  # now page 11 alone is too big
    (row,) = make_plan([doc], prompts, get_model("claude-sonnet-4-6"), 8_000, 4_096, pdf_mode="native").rows
    assert row.status == "does_not_fit" and "page 11 is over 0.4 MB" in row.reason
