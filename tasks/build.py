"""Stage 3a — requests: pure functions from (document, prompt, grant) to SDK batch `Request`s.

Nothing here touches the network. The beta header that lifts max_tokens to 300K is a batch
property, so it is carried next to the request (`betas`) and never put in `params`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING

from longbatch.cache import BREAKPOINT, cache_facts
from longbatch.catalog import ModelSpec
from longbatch.piece import Piece, StepLinks
from longbatch.tokens import estimate_from_cl100k
from tasks.ingest import Document
from tasks.prompts import SYSTEM_PROMPT, Prompt

if TYPE_CHECKING:  # the SDK's own request types, for the type checker: importing the SDK takes ~0.8 s,
    # which `longbatch plan` without a key never needs
    from anthropic.types.beta.message_create_params import MessageCreateParamsNonStreaming
    from anthropic.types.beta.messages.batch_create_params import Request

CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PlannedRequest:
    custom_id: str
    doc_id: str
    prompt: str
    model: str
    max_tokens: int
    betas: tuple[str, ...]
    # The request itself as it goes in the batch body: its JSON line (compact, UTF-8: the bytes
    # the SDK would send), made once when it is planned. None once `lean()`: a run holds
    # thousands of these, so the text is rendered again from the ingest cache when its batch is
    # written (tasks/batch_body.py).
    line: bytes | None
    body_bytes: int  # size of this request in the batch body, as the SDK serialises it
    fingerprint: str  # sha256 over params and betas: the same work always has the same one
    # Which piece of the document it is (kept in the ledger, so a part can be rebuilt and a
    # report can say what it covers), and for a combining step what it combined.
    piece: Piece = Piece()
    links: StepLinks | None = None
    # What it caches (model, system prompt and first block, hashed) when that block carries a
    # cache breakpoint; None when it caches nothing.
    prefix: str | None = None

    @property
    def params(self) -> MessageCreateParamsNonStreaming | None:
        """The request's params, read back from its line; None when lean."""
        return None if self.line is None else json.loads(self.line)["params"]

    def as_request(self) -> Request:
        if self.line is None:
            raise ValueError(f"request {self.custom_id} was made lean: render it from its document "
                             "(tasks/batch_body.py)")
        return json.loads(self.line)

    def lean(self) -> PlannedRequest:
        """The same request without its text: everything planning, packing and the ledger need."""
        return dataclasses.replace(self, line=None)

    @property
    def writes_cache(self) -> bool:
        """It carries a cache breakpoint, so it may pay the cache write premium."""
        return self.prefix is not None


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


def document_text(doc: Document, body: str | None = None) -> str:
    """The document as every prompt sends it: byte for byte the same, so it can be cached once.
    `body` in place of the document's (planning counts the wrapper apart from the body)."""
    name = _attr(doc.source)
    pages = f' pages="{doc.page_count}"' if doc.page_count else ""
    return f'<document name="{name}"{pages}>\n{doc.body if body is None else body}\n</document>'


def render_user_message(doc: Document, prompt: Prompt, max_tokens: int, body: str | None = None) -> str:
    """The document first, the instructions after it: long-context prompts work best that way.
    (The text of `user_content`'s blocks joined, for counting; `body`: see `document_text`.)"""
    return f"{document_text(doc, body)}\n\n{_instructions(prompt, _attr(doc.source), doc.page_count, max_tokens)}"


def user_content(doc: Document, prompt: Prompt, model: ModelSpec, max_tokens: int, cache: bool) -> list[dict]:
    """The user turn as blocks: the document (identical across prompts, with the cache
    breakpoint after it when `cache` and it is long enough), then the prompt's instructions."""
    document = text_block(document_text(doc), cache and cacheable(model, doc.body_cl100k))
    return [document, {"type": "text", "text": _instructions(prompt, _attr(doc.source), doc.page_count, max_tokens)}]


def text_block(text: str, breakpoint: bool = False) -> dict:
    return {"type": "text", "text": text, "cache_control": dict(BREAKPOINT)} if breakpoint else {"type": "text", "text": text}


def cacheable(model: ModelSpec, cl100k_tokens: int) -> bool:
    """Is a prefix of about this many cl100k tokens (the document; the system prompt is short)
    long enough for the model to cache? Below the minimum a breakpoint is not set."""
    return estimate_from_cl100k(cl100k_tokens, model.tokenizer).estimate >= cache_facts(model.id).min_tokens


def without_cache_control(content: str | list) -> str | list:
    """Content as the fingerprint sees it: a breakpoint changes what is billed, not what is
    asked, so setting or dropping one never makes the same work look new."""
    if isinstance(content, str):
        return content
    return [{k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block
            for block in content]


def _instructions(prompt: Prompt, name: str, pages: int | None, max_tokens: int) -> str:
    return Template(prompt.template).safe_substitute(
        document_name=name, pages=pages or "n/a", max_output_tokens=f"{max_tokens:,}")


def _attr(value: str) -> str:
    return value.replace('"', "'").replace("\n", " ")


def _part_texts(doc: Document, index: int, count: int, covers: str, body: str, prompt: Prompt,
                max_tokens: int) -> tuple[str, str]:
    """One part of a split document: its text, then what it is part of and the user's
    instructions narrowed to this part (the reports of all parts are combined afterwards)."""
    name = _attr(doc.source)
    text = f'<document name="{name}" part="{index} of {count}" covers="{_attr(covers)}">\n{body}\n</document>'
    instructions = (
        f'This is part {index} of {count} of the document "{name}" ({covers}); the whole document is too long '
        f"to read at once. Write the report asked for below on this part only. It will be combined with the "
        f"reports on the other parts into one report, so cover everything in this part in full detail, keep "
        f"page and section references, and do not guess at what the other parts contain.\n\n"
        + _instructions(prompt, name, doc.page_count, max_tokens)
    )
    return text, instructions


def render_part_message(doc: Document, index: int, count: int, covers: str, body: str, prompt: Prompt,
                        max_tokens: int) -> str:
    """`part_content`'s text joined, for counting."""
    return "\n\n".join(_part_texts(doc, index, count, covers, body, prompt, max_tokens))


def part_content(doc: Document, index: int, count: int, covers: str, body: str, prompt: Prompt, model: ModelSpec,
                 max_tokens: int, cache: bool) -> list[dict]:
    """A part as blocks: its text (the same for every prompt, cached like a whole document's),
    then the instructions."""
    text, instructions = _part_texts(doc, index, count, covers, body, prompt, max_tokens)
    share = doc.body_cl100k * len(body) // max(1, len(doc.body))  # the part's share of the counted body
    return [text_block(text, cache and cacheable(model, share)), {"type": "text", "text": instructions}]


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
        content = user_content(doc, prompt, model, model.max_batch_output, cache=False)
    return {"model": model.id, "system": SYSTEM_PROMPT, "messages": [{"role": "user", "content": content}]}


def native_content(doc: Document, prompt: Prompt, max_tokens: int, first: int = 1, last: int | None = None,
                   part: tuple[int, int, str] | None = None, cache: bool = False) -> tuple[list, list]:
    """A PDF document block (pages first..last; with the cache breakpoint after it when
    `cache`: every page costs far more than any model's minimum) and the instructions after it;
    and the same with the PDF's identity in place of its bytes, for the fingerprint."""
    from tasks.native import document_block, identity_block, pdf_for_pages

    last = last or len(doc.pages)
    title = doc.source if part is None else f"{doc.source} ({part[2]})"
    text = {"type": "text", "text": render_native_instructions(doc, prompt, max_tokens, part)}
    block = document_block(pdf_for_pages(doc, first, last), title)
    if cache:
        block["cache_control"] = dict(BREAKPOINT)
    return [block, text], [identity_block(doc, first, last, title), text]


def build_native_request(doc: Document, prompt: Prompt, model: ModelSpec, max_tokens: int,
                         extra_betas: tuple[str, ...] = (), cache: bool = False) -> PlannedRequest:
    """`cache`: other requests share this document (see PlanPolicy.cache_prefixes)."""
    content, identity = native_content(doc, prompt, max_tokens, cache=cache)
    piece = Piece(pdf_mode="native")
    return make_request(make_custom_id(doc.doc_id, prompt.name), doc.doc_id, prompt.name, model, max_tokens, content,
                        extra_betas, piece, identity_content=identity)


def build_request(doc: Document, prompt: Prompt, model: ModelSpec, max_tokens: int,
                  extra_betas: tuple[str, ...] = (), cache: bool = False) -> PlannedRequest:
    """`cache`: other requests share this document (see PlanPolicy.cache_prefixes)."""
    return make_request(make_custom_id(doc.doc_id, prompt.name), doc.doc_id, prompt.name, model, max_tokens,
                        user_content(doc, prompt, model, max_tokens, cache), extra_betas)


def make_request(custom_id: str, doc_id: str, prompt_name: str, model: ModelSpec, max_tokens: int,
                 user_content: str | list, extra_betas: tuple[str, ...] = (), piece: Piece = Piece(),
                 links: StepLinks | None = None, identity_content: list | None = None) -> PlannedRequest:
    """The one place a batch request is assembled, sized and fingerprinted. The fingerprint
    covers the exact params and betas, with `identity_content` (what a PDF block stands for)
    in place of the content when given, and without cache breakpoints."""
    params: MessageCreateParamsNonStreaming = {
        "model": model.id,
        "max_tokens": max_tokens,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": user_content}],  # type: ignore[typeddict-item]
    }
    betas = tuple(sorted(set(model.betas_for(max_tokens)) | set(extra_betas)))
    request: Request = {"custom_id": custom_id, "params": params}
    body = serialise(request)
    seen = without_cache_control(user_content if identity_content is None else identity_content)
    asked: Request = {"custom_id": custom_id, "params": {**params, "messages": [{"role": "user", "content": seen}]}}
    identity = body if seen == user_content else serialise(asked)  # most requests: what is sent is what is asked
    fingerprint = hashlib.sha256(identity + json.dumps(sorted(betas)).encode()).hexdigest()
    return PlannedRequest(custom_id, doc_id, prompt_name, model.id, max_tokens, betas, body, len(body), fingerprint,
                          piece, links, prefix_of(params))


def prefix_of(params: MessageCreateParamsNonStreaming) -> str | None:
    """What a request caches: its model, system prompt and first block, when that block has a
    cache breakpoint (the document goes there); None when it caches nothing."""
    content = params["messages"][0]["content"]
    if not isinstance(content, list) or not content or "cache_control" not in content[0]:
        return None
    first = {k: v for k, v in content[0].items() if k != "cache_control"}
    text = json.dumps([params["model"], params.get("system"), first], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def serialise(obj: object) -> bytes:
    """JSON exactly as the SDK sends it (compact, UTF-8), so sizes here are sizes on the wire."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
