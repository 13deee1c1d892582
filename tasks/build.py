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

    def as_request(self) -> Request:
        return Request(custom_id=self.custom_id, params=self.params)


def make_custom_id(doc_id: str, prompt_name: str, part: int | None = None) -> str:
    """Deterministic and within the API's rule `^[a-zA-Z0-9_-]{1,64}$`: a doc_id (<= 45
    characters) + a prompt tag (<= 12) + a part suffix (<= 5)."""
    tag = prompt_name
    if len(tag) > 12:  # keep long names apart: a prefix and a hash of the whole name
        tag = f"{prompt_name[:7]}-{hashlib.sha256(prompt_name.encode()).hexdigest()[:4]}"
    cid = f"{doc_id}--{tag}"
    if part is not None:
        cid += f"-p{part}"
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


def count_key(model_id: str, doc: Document, prompt: Prompt) -> str:
    """Identifies what count_tokens counts: the same document, prompt and model count the same."""
    return f"{model_id}:{doc.sha256}:{prompt.sha256}"


def count_params(doc: Document, prompt: Prompt, model: ModelSpec) -> dict:
    """The request as count_tokens sees it (no max_tokens; the prompt's output figure is the
    model's batch maximum, a few tokens at most from any grant: EXACT_MARGIN covers it)."""
    return {
        "model": model.id,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": render_user_message(doc, prompt, model.max_batch_output)}],
    }


def build_request(doc: Document, prompt: Prompt, model: ModelSpec, max_tokens: int,
                  extra_betas: tuple[str, ...] = ()) -> PlannedRequest:
    params: MessageCreateParamsNonStreaming = {
        "model": model.id,
        "max_tokens": max_tokens,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": render_user_message(doc, prompt, max_tokens)}],
    }
    betas = tuple(sorted(set(model.betas_for(max_tokens)) | set(extra_betas)))
    custom_id = make_custom_id(doc.doc_id, prompt.name)
    request = Request(custom_id=custom_id, params=params)
    body = serialise(request)
    fingerprint = hashlib.sha256(body + json.dumps(sorted(betas)).encode()).hexdigest()
    return PlannedRequest(custom_id, doc.doc_id, prompt.name, model.id, max_tokens, betas, params, len(body), fingerprint)


def serialise(obj: object) -> bytes:
    """JSON exactly as the SDK sends it (compact, UTF-8), so sizes here are sizes on the wire."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
