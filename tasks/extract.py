"""Stage 1, inside one file: its bytes as text — text files decoded (UTF-8, UTF-16 with a byte
order mark, or a recognised legacy encoding), PDFs page by page by PDFium (pypdf where PDFium
refuses a file). Anything that cannot be read raises `Unreadable` with its category and reason;
tasks/ingest.py turns that into the document's recorded failure.
"""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from longbatch.errors import Unreadable

log = logging.getLogger(__name__)

# A PDF averaging fewer extractable characters per page than this is taken as scanned.
MIN_CHARS_PER_PAGE = 40


def decode_text(data: bytes) -> tuple[str, list[str]]:
    if not data.strip():
        raise Unreadable("empty", "the file is empty")
    notes: list[str] = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16")
        notes.append("decoded as UTF-16 (byte order mark)")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = _guess_decode(data)
            notes.append(f"not UTF-8; decoded as {text[1]}")
            text = text[0]
    if "\x00" in text:
        raise Unreadable("encoding", "the file contains NUL bytes: it looks binary, not text")
    if not text.strip():
        raise Unreadable("empty", "the file holds only white space")
    return text, notes


def _guess_decode(data: bytes) -> tuple[str, str]:
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 4 * 1024 * 1024]).best()
    if best is None or best.encoding is None:
        raise Unreadable("encoding", "not UTF-8, and no text encoding could be recognised")
    try:
        return data.decode(best.encoding), best.encoding
    except (UnicodeDecodeError, LookupError):
        raise Unreadable(
            "encoding", f"not UTF-8; looks like {best.encoding} but does not decode cleanly as it"
        ) from None


def pdf_pages(data: bytes, images_are_read: bool = False) -> tuple[list[str], list[str]]:
    """Text per page, by PDFium; by pypdf when PDFium will not open the file (pypdf also names
    the missing feature, e.g. an unsupported filter, where PDFium only says "format error")."""
    if not data.strip():
        raise Unreadable("empty", "the file is empty")
    try:
        extracted = _pdfium_pages(data)
    except _PdfiumRefused as refused:
        extracted = _pypdf_pages(data)
        extracted.notes.insert(0, f"read with pypdf: PDFium could not open it ({refused})")
    return _judge(extracted, images_are_read)


@dataclass
class _Extracted:
    """What an extractor found, before deciding whether it is a readable document."""
    pages: list[str]
    notes: list[str]
    image_pages: Callable[[], int]  # pages showing an image; asked only when the text is thin
    failed: int = 0  # pages whose content could not be decoded at all
    blank: int = 0  # pages with nothing drawn on them (PDFium: no page objects)
    unmapped: list[int] = field(default_factory=list)  # 1-based pages whose glyphs have no Unicode


class _PdfiumRefused(Exception):
    pass


def _pdfium_pages(data: bytes) -> _Extracted:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        pdf = pdfium.PdfDocument(data)  # owner-restricted files open with the empty user password
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise Unreadable("encrypted", "the PDF is encrypted and needs a password to open") from None
        raise _PdfiumRefused(str(exc).removeprefix("Failed to load document ").strip("()."))
    try:
        notes = []
        if pdfium_c.FPDF_GetSecurityHandlerRevision(pdf) != -1:
            notes.append("encrypted with an empty user password; decrypted")
        if len(pdf) == 0:
            raise Unreadable("empty", "the PDF has no pages")
        pages: list[str] = []
        blank = 0
        unmapped: list[int] = []
        for index in range(len(pdf)):
            try:
                page = pdf[index]
            except pdfium.PdfiumError:  # a broken page tree (a circular one, say): let pypdf judge the file
                raise _PdfiumRefused(f"page {index + 1} cannot be loaded") from None
            try:
                textpage = page.get_textpage()
                chars = pdfium_c.FPDFText_CountChars(textpage)
                text = textpage.get_text_range() if chars > 0 else ""
                objects = pdfium_c.FPDFPage_CountObjects(page)
                blank += objects == 0
                # Glyphs without a Unicode mapping give no characters at all in PDFium: many text
                # objects and few characters is such a font (a vertical CJK gazette: 2,624 and 28).
                if objects > 4 * chars and _text_objects(page, pdfium_c) > 4 * max(chars, 5):
                    unmapped.append(index + 1)
                textpage.close()
            finally:
                page.close()
            pages.append(_clean(text))
        image_pages = sum(_pdfium_page_has_image(pdf, i, pdfium_c) for i in range(len(pdf))) \
            if _thin(pages) else 0
    finally:
        pdf.close()
    return _Extracted(pages, notes, lambda: image_pages, blank=blank, unmapped=unmapped)


def _text_objects(page, pdfium_c) -> int:
    return sum(pdfium_c.FPDFPageObj_GetType(pdfium_c.FPDFPage_GetObject(page, i)) == pdfium_c.FPDF_PAGEOBJ_TEXT
               for i in range(pdfium_c.FPDFPage_CountObjects(page)))


def _pdfium_page_has_image(pdf, index: int, pdfium_c) -> bool:
    page = pdf[index]
    try:
        return next(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2), None) is not None
    finally:
        page.close()


def _thin(pages: list[str]) -> bool:
    return sum(len(p.strip()) for p in pages) < MIN_CHARS_PER_PAGE * len(pages)


def _pypdf_pages(data: bytes) -> _Extracted:
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

    notes: list[str] = []
    # pypdf logs and warns at length about fonts and damaged objects it works around; the
    # outcome that matters is recorded per document, so keep that noise off the console.
    pypdf_log = logging.getLogger("pypdf")
    old_level = pypdf_log.level
    pypdf_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reader = PdfReader(io.BytesIO(data))
                if reader.is_encrypted:
                    if not reader.decrypt(""):
                        raise Unreadable("encrypted", "the PDF is encrypted and needs a password to open")
                    notes.append("encrypted with an empty user password; decrypted")
                page_objs = list(reader.pages)
            except Unreadable:
                raise
            except FileNotDecryptedError:
                raise Unreadable("encrypted", "the PDF is encrypted and needs a password to open") from None
            except (DependencyError, NotImplementedError) as exc:
                raise Unreadable("unsupported", f"the PDF uses a feature longbatch cannot read: {exc}") from None
            except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                    RecursionError, OSError) as exc:
                msg = str(exc)
                if "is required" in msg or "not supported" in msg.lower() or "unsupported" in msg.lower():
                    raise Unreadable("unsupported", f"the PDF uses a feature longbatch cannot read: {msg}") from None
                raise Unreadable("corrupt", f"the PDF is damaged and cannot be read: {msg or type(exc).__name__}") from None
            if not page_objs:
                raise Unreadable("empty", "the PDF has no pages")
            pages: list[str] = []
            failed = 0
            for page in page_objs:
                try:
                    text = page.extract_text() or ""
                except Exception:  # noqa: BLE001 - one bad page must not lose the others
                    failed += 1
                    text = ""
                pages.append(_clean(text))
    finally:
        pypdf_log.setLevel(old_level)
    return _Extracted(pages, notes, lambda: sum(_has_images(p) for p in page_objs), failed=failed)


def _judge(found: _Extracted, images_are_read: bool) -> tuple[list[str], list[str]]:
    """Readable document or not, and what the user should know about it: the same rules
    whichever library read the pages."""
    pages, notes = found.pages, found.notes
    if found.failed:
        notes.append(f"{found.failed} of {len(pages)} pages could not be read and are empty")
    garbled = sorted({*found.unmapped, *(i for i, text in enumerate(pages, 1) if _looks_garbled(text))})
    if garbled:
        log.warning("%d page(s) look garbled", len(garbled))
        notes.append(f"{len(garbled)} page(s) look garbled (fonts without a usable Unicode mapping), "
                     f"first: page {garbled[0]}")
    chars = sum(len(p.strip()) for p in pages)
    if chars == 0 and found.failed:
        raise Unreadable(
            "corrupt", f"the PDF's page content is damaged: no text could be decoded from its {len(pages)} pages"
        )
    # PDFium parses what it can of a damaged content stream and draws nothing for the rest: a
    # document most of whose pages are blank is damaged (real ones have a few blank pages at most).
    if found.blank * 2 > len(pages) and len(pages) > 1:
        raise Unreadable(
            "corrupt", f"the PDF's page content is damaged or blank: {found.blank} of its {len(pages)} pages draw "
            "nothing"
        )
    # Little text is fine on a short text-only page; little text over pages of images is a scan.
    if chars == 0 or (_thin(pages) and found.image_pages() * 2 >= len(pages)):
        if images_are_read:
            notes.append(f"almost no text layer ({chars} characters over {len(pages)} pages): the model reads "
                         "the page images")
            return pages, notes
        raise Unreadable(
            "no_text",
            f"almost no extractable text ({chars} characters over {len(pages)} pages): it looks scanned or "
            "image-only; run OCR on it first (for example with ocrmypdf)",
        )
    return pages, notes


def _looks_garbled(text: str) -> bool:
    """Text drawn from many unrelated scripts at once is a font-mapping failure, not a language:
    real pages mix two or three scripts (Japanese: kanji, kana, Latin), not six."""
    if text.isascii():  # one script (and the common case, decided at C speed)
        return False
    # Counted per distinct character, not per character: a page has thousands of characters
    # but a few hundred distinct ones, and naming a character is the slow part.
    scripts: dict[str, int] = {}
    letters = 0
    for c, n in Counter(text).items():
        if c.isalpha():
            script = unicodedata.name(c, "UNKNOWN").split()[0]
            scripts[script] = scripts.get(script, 0) + n
            letters += n
    if letters < 50:
        return False
    return sum(1 for n in scripts.values() if n >= 0.03 * letters) >= 6


def _has_images(page) -> bool:
    try:
        xobjects = page.get("/Resources", {}).get_object().get("/XObject", {}).get_object()
        return any(x.get_object().get("/Subtype") == "/Image" for x in xobjects.values())
    except Exception:  # noqa: BLE001 - a damaged resource dictionary just means "unknown"
        return False


def _clean(text: str) -> str:
    # PDFium ends lines with CRLF and marks a hyphen it joined across a line break with U+FFFE
    # ("com\ufffepany"): the word is whole again without it. NFKC folds presentation forms
    # (ligatures such as "ﬁ", full-width letters) into the characters a reader means. Control
    # characters other than tab and newline (glyph codes of symbol fonts with no Unicode, NUL)
    # carry nothing.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufffe", "")
    return _CONTROL.sub("", unicodedata.normalize("NFKC", text))


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
