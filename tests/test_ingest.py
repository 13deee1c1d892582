"""Ingest: real corpus files, and every kind of bad input, end as a Document or a readable failure."""

from __future__ import annotations

import re

import pytest

from tasks.build import CUSTOM_ID_RE, make_custom_id
from tasks.ingest import Document, IngestFailure, discover, read_document

# (file, expected kind or failure category, pages or None, a phrase the text or reason holds)
CASES = [
    ("pdf/paper_tracemonkey_pldi2009_14p.pdf", "pdf", 14, "Trace-based"),
    ("pdf/enc_owner_restricted_rc4_dmca_18p.pdf", "pdf", 18, "Copyright"),
    ("pdf/scanned_with_ocr_text_layer_vicksburg_6p.pdf", "pdf", 6, "Vicksburg"),
    ("pdf/ligatures_copy_paste.pdf", "pdf", 1, "ffi"),
    ("pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf", "encrypted", None, "password"),
    ("pdf/enc_rc4-40bit_userpw-baz_ownerpw-foo.pdf", "encrypted", None, "password"),
    ("pdf/broken_header_and_eof_only_44bytes.pdf", "corrupt", None, "damaged"),
    ("pdf/broken_truncated_60pct_nist_sp800-223.pdf", "corrupt", None, "damaged"),
    ("pdf/broken_fuzzed_poppler-90-0_16p.pdf", "corrupt", None, "damaged"),
    ("pdf/broken_unsupported_brotli_filter.pdf", "unsupported", None, "brotli"),
    ("pdf/scanned_image_only_ccitt_irs_i1040nr_24p.pdf", "no_text", None, "OCR"),
    ("pdf/scanned_multipage_mixed_ocrmypdf_6p.pdf", "no_text", None, "scanned"),
    ("text/sec_10k_apple.md", "markdown", None, "Apple"),
    ("text/hongloumeng_dream_of_the_red_chamber_GB18030.txt", "text", None, "红楼梦"),
    ("text/udhr_article1_multilingual.txt", "text", None, "dignity"),
]


@pytest.mark.parametrize(("name", "expected", "pages", "phrase"), CASES, ids=[c[0].split("/")[1][:40] for c in CASES])
def test_corpus_file(corpus, name, expected, pages, phrase):
    item = read_document(corpus / name, corpus)
    if expected in ("pdf", "text", "markdown"):
        assert isinstance(item, Document), getattr(item, "reason", "")
        assert item.kind == expected
        assert item.page_count == pages
        assert phrase in item.body
        assert item.body_cl100k > 0
    else:
        assert isinstance(item, IngestFailure)
        assert item.category == expected
        assert phrase.lower() in item.reason.lower()
    assert CUSTOM_ID_RE.match(make_custom_id(item.doc_id, "report"))


def test_gb18030_is_decoded_not_mangled(corpus):
    doc = read_document(corpus / "text/hongloumeng_dream_of_the_red_chamber_GB18030.txt", corpus)
    assert isinstance(doc, Document)
    assert any("GB18030" in n.upper() for n in doc.notes)
    assert "\ufffd" not in doc.body[:100_000]


def test_garbled_pdf_text_is_kept_and_flagged(corpus):
    # pypdf cannot map this gazette's vertical CJK fonts: the text comes out in a dozen scripts.
    doc = read_document(corpus / "pdf/cjk_japanese_official_gazette_kampo_rc4.pdf", corpus)
    assert isinstance(doc, Document)
    assert any("garbled" in n for n in doc.notes)
    assert any("decrypted" in n for n in doc.notes)


def test_real_cjk_pdf_is_not_flagged_garbled(corpus):
    from tasks.extract import _looks_garbled

    doc = read_document(corpus / "text/udhr_article1_multilingual.txt", corpus)
    japanese = "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。" * 3
    assert not _looks_garbled(japanese + " Article 1 of the Universal Declaration")
    assert doc.notes == ()


def test_pdf_pages_are_kept_in_order(corpus):
    doc = read_document(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", corpus)
    assert len(doc.pages) == 14
    positions = [doc.body.index(f"--- Page {i} ---") for i in range(1, 15)]
    assert positions == sorted(positions)


def test_ligatures_are_normalised(corpus):
    doc = read_document(corpus / "pdf/ligatures_copy_paste.pdf", corpus)
    assert not re.search("[\ufb00-\ufb06]", doc.body)


@pytest.mark.parametrize(("content", "category"), [
    (b"", "empty"),
    (b"   \n\t  \n", "empty"),
    (b"text\x00with\x00nul\x00bytes" * 10, "encoding"),
])
def test_bad_text_files(tmp_path, content, category):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    item = read_document(path, tmp_path)
    assert isinstance(item, IngestFailure)
    assert item.category == category


def test_empty_pdf_and_unsupported_type(tmp_path):
    (tmp_path / "zero.pdf").write_bytes(b"")
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04 not really")
    zero = read_document(tmp_path / "zero.pdf", tmp_path)
    docx = read_document(tmp_path / "notes.docx", tmp_path)
    assert (zero.category, docx.category) == ("empty", "unsupported")
    assert ".docx" in docx.reason


def test_utf16_with_bom(tmp_path):
    path = tmp_path / "u16.txt"
    path.write_bytes("Grüße aus Köln. " .encode("utf-16") * 20)
    doc = read_document(path, tmp_path)
    assert isinstance(doc, Document) and "Grüße" in doc.body


HOSTILE = ["../../escape.txt", "..", "semi;colon && rm -rf ~.md", "new\nline.txt", "Überlänge " * 20 + ".txt",
           "日本語の文書.txt", "-leading-dash.txt", "CON.txt", " spaces  .md"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_give_safe_ids(tmp_path, name):
    safe_name = name.replace("/", "_")  # a file name cannot hold a slash; the rest is as given
    if safe_name in ("..",):
        safe_name = "..txt"
    path = tmp_path / "inbox" / safe_name
    path.parent.mkdir(exist_ok=True)
    path.write_text("Some real content for the report. " * 5, encoding="utf-8")
    doc = read_document(path, tmp_path / "inbox")
    assert isinstance(doc, Document)
    assert re.fullmatch(r"[a-z0-9-]+", doc.doc_id)
    assert ".." not in doc.doc_id and "/" not in doc.doc_id
    assert CUSTOM_ID_RE.match(make_custom_id(doc.doc_id, "report"))


def test_doc_id_is_stable_and_follows_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First version of the text, long enough.", encoding="utf-8")
    first = read_document(path, tmp_path).doc_id
    assert read_document(path, tmp_path).doc_id == first
    path.write_text("Second version of the text, long enough.", encoding="utf-8")
    assert read_document(path, tmp_path).doc_id != first


def test_discover_is_recursive_and_skips_hidden(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for rel in ["a.txt", "sub/b.md", "sub/deeper/c.pdf", ".hidden.txt", ".git/config", "sub/.DS_Store"]:
        (tmp_path / rel).write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)]
    assert found == ["a.txt", "sub/b.md", "sub/deeper/c.pdf"]


def test_missing_inbox_is_empty(tmp_path):
    assert discover(tmp_path / "nope") == []


def test_enormous_file_is_refused_without_reading_it(tmp_path):
    from tasks.ingest import MAX_FILE_BYTES

    path = tmp_path / "enormous.txt"
    with path.open("wb") as fh:  # sparse: the size of a huge file without the disk or the time
        fh.truncate(MAX_FILE_BYTES + 1)
    item = read_document(path, tmp_path)
    assert isinstance(item, IngestFailure) and item.category == "too_large"
    assert "MB" in item.reason


def test_file_gone_between_discovery_and_reading_is_a_failure_not_a_crash(tmp_path):
    path = tmp_path / "vanished.txt"
    path.write_text("Some content that will be gone. " * 10)
    [found] = discover(tmp_path)
    path.unlink()
    item = read_document(found, tmp_path)
    assert isinstance(item, IngestFailure) and item.category == "unreadable"
    assert "cannot read" in item.reason


# -- PDFs built here to be hostile: PDFium reads, pypdf where PDFium refuses, every failure named --

def _pdf_with_pages(n: int, text: str | None = None, **encrypt) -> bytes:
    """A small PDF of `n` pages, each showing `text` (or blank), optionally encrypted by pypdf."""
    import io

    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                                                NameObject("/Subtype"): NameObject("/Type1"),
                                                NameObject("/BaseFont"): NameObject("/Helvetica")}))
    for i in range(n):
        page = writer.add_blank_page(612, 792)
        if text is not None:
            content = DecodedStreamObject()
            content.set_data(f"BT /F1 12 Tf 72 700 Td ({text} {i + 1}) Tj ET".encode())
            page[NameObject("/Contents")] = writer._add_object(content)
            page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
                {NameObject("/F1"): font})})
    if encrypt:
        writer.encrypt(**encrypt)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


SENTENCE = "The quarterly report states that revenue grew across every region this year"


def test_generated_pdf_reads_page_by_page_with_markers(tmp_path):
    (tmp_path / "made.pdf").write_bytes(_pdf_with_pages(3, SENTENCE))
    doc = read_document(tmp_path / "made.pdf", tmp_path)
    assert isinstance(doc, Document) and doc.page_count == 3
    assert doc.pages[2].strip() == f"{SENTENCE} 3"
    assert doc.body.startswith(f"--- Page 1 ---\n{SENTENCE} 1")
    assert "\r" not in doc.body and doc.notes == ()


def test_aes256_with_empty_user_password_opens_and_says_so(tmp_path):
    (tmp_path / "owner.pdf").write_bytes(_pdf_with_pages(2, SENTENCE, user_password="", owner_password="owner-secret",
                                                         algorithm="AES-256"))
    doc = read_document(tmp_path / "owner.pdf", tmp_path)
    assert isinstance(doc, Document), getattr(doc, "reason", "")
    assert SENTENCE in doc.body
    assert any("decrypted" in n for n in doc.notes)


@pytest.mark.parametrize("algorithm", ["AES-256", "RC4-128"])
def test_pdf_needing_a_user_password_is_refused_as_encrypted(tmp_path, algorithm):
    (tmp_path / "locked.pdf").write_bytes(_pdf_with_pages(1, SENTENCE, user_password="user-secret",
                                                          owner_password="owner-secret", algorithm=algorithm))
    item = read_document(tmp_path / "locked.pdf", tmp_path)
    assert isinstance(item, IngestFailure)
    assert (item.category, item.reason) == ("encrypted", "the PDF is encrypted and needs a password to open")


def test_pdf_pdfium_refuses_is_read_by_pypdf(tmp_path, corpus):
    # 2 KB of junk before the header (a download that kept its HTTP preamble): PDFium looks for
    # "%PDF" in the first 1,024 bytes only and refuses; pypdf finds the document behind it.
    data = b"X" * 2048 + (corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf").read_bytes()
    (tmp_path / "prefixed.pdf").write_bytes(data)
    doc = read_document(tmp_path / "prefixed.pdf", tmp_path)
    assert isinstance(doc, Document), getattr(doc, "reason", "")
    assert doc.page_count == 14 and "Trace-based" in doc.body
    assert any(n.startswith("read with pypdf: PDFium could not open it") for n in doc.notes)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_pdf_is_corrupt(tmp_path, corpus, fraction):
    data = (corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf").read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: int(len(data) * fraction)])
    item = read_document(tmp_path / "cut.pdf", tmp_path)
    assert isinstance(item, IngestFailure) and item.category == "corrupt"
    assert "damaged" in item.reason


def test_random_bytes_named_pdf_are_corrupt(tmp_path):
    import random

    (tmp_path / "noise.pdf").write_bytes(random.Random(7).randbytes(20_000))
    item = read_document(tmp_path / "noise.pdf", tmp_path)
    assert isinstance(item, IngestFailure) and item.category == "corrupt"


def test_pages_that_draw_nothing_are_damaged_or_blank(tmp_path):
    (tmp_path / "blank.pdf").write_bytes(_pdf_with_pages(3))
    item = read_document(tmp_path / "blank.pdf", tmp_path)
    assert isinstance(item, IngestFailure) and item.category == "corrupt"
    assert "3 of its 3 pages draw nothing" in item.reason


def test_image_only_pdf_is_read_from_images_in_native_mode_only(corpus):
    path = corpus / "pdf/scanned_image_only_ccitt_irs_i1040nr_24p.pdf"
    as_text = read_document(path, path.parent)
    as_native = read_document(path, path.parent, native_pdf=True)
    assert isinstance(as_text, IngestFailure) and as_text.category == "no_text"
    assert isinstance(as_native, Document) and as_native.page_count == 24
    assert any("reads the page images" in n for n in as_native.notes)


def test_pdfium_hyphen_marks_and_line_ends_are_cleaned(corpus):
    # PDFium joins "com-" + "pany" across a line break and marks it with U+FFFE; lines end in CRLF.
    doc = read_document(corpus / "pdf/long_freeculture_lessig_2004_352p.pdf", corpus)
    assert "\ufffe" not in doc.body and "\r" not in doc.body
    assert "company launched a campaign" in " ".join(doc.body.split())
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", doc.body)
