"""Stage 3a — requests: pure functions from (document, prompt, grant) to SDK batch `Request`s.

Nothing here touches the network. The beta header that lifts max_tokens to 300K is a batch
property, so it is carried next to the request (`betas`) and never put in `params`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from string import Template

from anthropic.types.beta.messages.batch_create_params import Request
from anthropic.types.beta.message_create_params import MessageCreateParamsNonStreaming

from longbatch.catalog import ModelSpec
from longbatch.piece import Piece, StepLinks
from tasks.ingest import Document
from tasks.prompts import SYSTEM_PROMPT, Prompt

CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PlannedRequest:
    custom_id: str
    doc_id: str
    prompt: str
    model: str
    max_tokens: int
    betas: tuple[str, ...]
    params: MessageCreateParamsNonStreaming
    body_bytes: int  # size of this request in the batch body, as the SDK serialises it
    fingerprint: str  # sha256 over params and betas: the same work always has the same one
    # Which piece of the document it is (kept in the ledger, so a part can be rebuilt and a
    # report can say what it covers), and for a combining step what it combined.
    piece: Piece = Piece()
    links: StepLinks | None = None

    def as_request(self) -> Request:
        return Request(custom_id=self.custom_id, params=self.params)


def make_custom_id(doc_id: str, prompt_name: str, piece: Piece = Piece()) -> str:
    """Deterministic and within the API's rule `^[a-zA-Z0-9_-]{1,64}$`: a doc_id (<= 45
    characters) + a prompt tag (<= 12) + for split documents the piece (<= 4: `p12` is part 12,
    `m3` merge step 3, `f` the final combined report)."""
    tag = prompt_name
    if len(tag) > 12:  # keep long names apart: a prefix and a hash of the whole name
        tag = f"{prompt_name[:7]}-{hashlib.sha256(prompt_name.encode()).hexdigest()[:4]}"
    cid = f"{doc_id}--{tag}"
    if piece.id_suffix is not None:
        cid += f"-{piece.id_suffix}"
    if not CUSTOM_ID_RE.match(cid):
        raise ValueError(f"custom_id {cid!r} breaks the API's rule {CUSTOM_ID_RE.pattern}")
    return cid


def render_user_message(doc: Document, prompt: Prompt, max_tokens: int) -> str:
    """The document first, the instructions after it: long-context prompts work best that way."""
    name = doc.source.replace('"', "'").replace("\n", " ")
    pages = f' pages="{doc.page_count}"' if doc.page_count else ""
    instructions = Template(prompt.template).safe_substitute(
        document_name=name,
        pages=doc.page_count or "n/a",
        max_output_tokens=f"{max_tokens:,}",
    )
    return f'<document name="{name}"{pages}>\n{doc.body}\n</document>\n\n{instructions}'


def _instructions(prompt: Prompt, name: str, pages: int | None, max_tokens: int) -> str:
    return Template(prompt.template).safe_substitute(
        document_name=name, pages=pages or "n/a", max_output_tokens=f"{max_tokens:,}")


def _attr(value: str) -> str:
    return value.replace('"', "'").replace("\n", " ")


def render_part_message(doc: Document, index: int, count: int, covers: str, body: str, prompt: Prompt,
                        max_tokens: int) -> str:
    """One part of a split document: its text, what it is part of, and the user's instructions
    narrowed to this part (the reports of all parts are combined afterwards)."""
    name = _attr(doc.source)
    return (
        f'<document name="{name}" part="{index} of {count}" covers="{_attr(covers)}">\n{body}\n</document>\n\n'
        f'This is part {index} of {count} of the document "{name}" ({covers}); the whole document is too long '
        f"to read at once. Write the report asked for below on this part only. It will be combined with the "
        f"reports on the other parts into one report, so cover everything in this part in full detail, keep "
        f"page and section references, and do not guess at what the other parts contain.\n\n"
        + _instructions(prompt, name, doc.page_count, max_tokens)
    )


def render_native_instructions(doc: Document, prompt: Prompt, max_tokens: int,
                               part: tuple[int, int, str] | None = None) -> str:
    """The text after a PDF document block: which document (or part of it) it is, then the
    user's instructions."""
    name = _attr(doc.source)
    if part is None:
        head = f'The PDF above is the document "{name}" ({doc.page_count} pages).\n\n'
    else:
        index, count, covers = part
        head = (f'The PDF above is part {index} of {count} of the document "{name}" ({covers}); the whole document '
                f"is too long to read at once. Write the report asked for below on this part only. It will be "
                f"combined with the reports on the other parts into one report, so cover everything in this part "
                f"in full detail, keep page references, and do not guess at what the other parts contain.\n\n")
    return head + _instructions(prompt, name, doc.page_count, max_tokens)


def render_reduce_message(source: str, pages: int | None, covers: str, children: list[tuple[str, str]],
                          final: bool, prompt: Prompt, max_tokens: int) -> str:
    """Combine the reports on consecutive parts (`children`: (what it covers, report text)) into
    one report: the whole document's (`final`) or a larger stretch's, for a further step."""
    name = _attr(source)
    blocks = "".join(f'<part_report index="{i}" covers="{_attr(c)}">\n{text}\n</part_report>\n'
                     for i, (c, text) in enumerate(children, 1))
    scope = ("one report on the whole document" if final else
             f"one report on {covers} (itself to be combined with the reports on the rest of the document)")
    return (
        f'<part_reports document="{name}" covers="{_attr(covers)}">\n{blocks}</part_reports>\n\n'
        f'The document "{name}" was too long to read at once, so it was read in {len(children)} consecutive parts '
        f"and a report was written on each, above in order. Combine them into {scope}, following the "
        f"instructions below as if you had read the document itself: merge what belongs together, keep every "
        f"figure, name, date, defined term and quotation the part reports give, keep their page and section "
        f"references, and flag what a part report says is incomplete.\n\n"
        + _instructions(prompt, name, pages, max_tokens)
    )


def count_key(model_id: str, doc: Document, prompt: Prompt, native: bool = False) -> str:
    """Identifies what count_tokens counts: the same document, prompt, model and PDF mode count
    the same."""
    return f"{model_id}:{doc.sha256}:{prompt.sha256}" + (":native" if native else "")


def count_params(doc: Document, prompt: Prompt, model: ModelSpec, native: bool = False) -> dict:
    """The request as count_tokens sees it (no max_tokens; the prompt's output figure is the
    model's batch maximum, a few tokens at most from any grant: EXACT_MARGIN covers it)."""
    if native:
        content, _ = native_content(doc, prompt, model.max_batch_output)
    else:
        content = render_user_message(doc, prompt, model.max_batch_output)
    return {"model": model.id, "system": SYSTEM_PROMPT, "messages": [{"role": "user", "content": content}]}


def native_content(doc: Document, prompt: Prompt, max_tokens: int, first: int = 1, last: int | None = None,
                   part: tuple[int, int, str] | None = None) -> tuple[list, list]:
    """A PDF document block (pages first..last) and the instructions after it; and the same
    with the PDF's identity in place of its bytes, for the fingerprint."""
    from tasks.native import document_block, identity_block, pdf_for_pages

    last = last or len(doc.pages)
    title = doc.source if part is None else f"{doc.source} ({part[2]})"
    text = {"type": "text", "text": render_native_instructions(doc, prompt, max_tokens, part)}
    return ([document_block(pdf_for_pages(doc, first, last), title), text],
            [identity_block(doc, first, last, title), text])


def build_native_request(doc: Document, prompt: Prompt, model: ModelSpec, max_tokens: int,
                         extra_betas: tuple[str, ...] = ()) -> PlannedRequest:
    content, identity = native_content(doc, prompt, max_tokens)
    piece = Piece(pdf_mode="native")
    return make_request(make_custom_id(doc.doc_id, prompt.name), doc.doc_id, prompt.name, model, max_tokens, content,
                        extra_betas, piece, identity_content=identity)


def build_request(doc: Document, prompt: Prompt, model: ModelSpec, max_tokens: int,
                  extra_betas: tuple[str, ...] = ()) -> PlannedRequest:
    return make_request(make_custom_id(doc.doc_id, prompt.name), doc.doc_id, prompt.name, model, max_tokens,
                        render_user_message(doc, prompt, max_tokens), extra_betas)


def make_request(custom_id: str, doc_id: str, prompt_name: str, model: ModelSpec, max_tokens: int,
                 user_content: str | list, extra_betas: tuple[str, ...] = (), piece: Piece = Piece(),
                 links: StepLinks | None = None, identity_content: list | None = None) -> PlannedRequest:
    """The one place a batch request is assembled, sized and fingerprinted. The fingerprint
    covers the exact params and betas, with `identity_content` (what a PDF block stands for)
    in place of the content when given."""
    params: MessageCreateParamsNonStreaming = {
        "model": model.id,
        "max_tokens": max_tokens,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": user_content}],  # type: ignore[typeddict-item]
    }
    betas = tuple(sorted(set(model.betas_for(max_tokens)) | set(extra_betas)))
    request = Request(custom_id=custom_id, params=params)
    body = serialise(request)
    identity = body if identity_content is None else serialise(
        Request(custom_id=custom_id, params={**params, "messages": [{"role": "user", "content": identity_content}]}))
    fingerprint = hashlib.sha256(identity + json.dumps(sorted(betas)).encode()).hexdigest()
    return PlannedRequest(custom_id, doc_id, prompt_name, model.id, max_tokens, betas, params, len(body), fingerprint,
                          piece, links)


def serialise(obj: object) -> bytes:
    """JSON exactly as the SDK sends it (compact, UTF-8), so sizes here are sizes on the wire."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
