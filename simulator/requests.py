"""What the simulated service reads in a request: its model, its text (system prompt, message
blocks, PDF pages as their text), its token count, and the checks that depend on them."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from longbatch.catalog import ALIASES, BUILTIN_MODELS, OUTPUT_300K_BETA, OUTPUT_300K_MAX, ModelSpec
from simulator.pdf import PdfBlockError, read_block as read_pdf_block
from simulator.tokens import REQUEST_OVERHEAD, count_for_family


def non_default_sampling(params: dict[str, Any]) -> str | None:
    """The first of temperature/top_p/top_k set to something other than its default."""
    defaults = {"temperature": 1.0, "top_p": 1.0}
    for name in ("temperature", "top_p", "top_k"):
        if name in params and params[name] != defaults.get(name):
            return name
    return None


def echo_headers(api_key: str) -> str:
    """What a server that echoes request headers appends to an error message."""
    return f" (request headers: x-api-key: {api_key}; authorization: Bearer {api_key})"


def resolve_model(model_id: str, overrides: dict[str, dict[str, Any]] | None = None) -> ModelSpec | None:
    spec = BUILTIN_MODELS.get(ALIASES.get(model_id, model_id))
    if spec is not None and overrides and spec.id in overrides:
        spec = dataclasses.replace(spec, **overrides[spec.id])
    return spec


def request_text(params: dict[str, Any], window: int = 1_000_000) -> str:
    """All the text a request sends (system prompt and message contents, PDF pages as their
    text). Raises PdfBlockError for a PDF the service would refuse."""
    return _read_request(params, window)[0]


def _read_request(params: dict[str, Any], window: int) -> tuple[str, int]:
    """(text, image tokens of PDF pages)."""
    parts: list[str] = []
    images = 0
    system = params.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts.extend(b.get("text", "") for b in system if isinstance(b, dict))
    for message in params.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "document":
                    pdf = read_pdf_block(block, window)
                    parts.append(pdf.text(str(block.get("title") or "document")))
                    images += pdf.image_tokens
                elif isinstance(block, dict):
                    parts.append(block.get("text", ""))
    return "\n".join(parts), images


MAX_PDF_REQUEST_BYTES = 32 * 1024 * 1024


def has_document(params: dict[str, Any]) -> bool:
    return any(isinstance(b, dict) and b.get("type") == "document"
               for m in params.get("messages") or [] if isinstance(m, dict) and isinstance(m.get("content"), list)
               for b in m["content"])


def count_request_tokens(params: dict[str, Any], spec: ModelSpec) -> int:
    text, images = _read_request(params, spec.context_window)
    return REQUEST_OVERHEAD + count_for_family(text, spec.tokenizer) + images


ALLOWED_PARAMS = {
    "model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "thinking", "container", "service_tier",
    "output_config", "context_management", "mcp_servers",
}


class RequestRefused(Exception):
    """A request the service answers with an errored result (validated after the batch ends)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def check_request(params: dict[str, Any], betas: tuple[str, ...],
                  overrides: dict[str, dict[str, Any]] | None = None) -> tuple[ModelSpec, str, int]:
    """(model, text, input tokens) of a request the service accepts; RequestRefused otherwise."""
    extra = sorted(set(params) - ALLOWED_PARAMS)
    if "betas" in params:
        raise RequestRefused("invalid_request_error",
                             "betas: not a request parameter; beta headers are set per batch (anthropic-beta)")
    if extra:
        raise RequestRefused("invalid_request_error", f"{extra[0]}: Extra inputs are not permitted")
    spec = resolve_model(str(params.get("model")), overrides)
    if spec is None:
        raise RequestRefused("invalid_request_error", f"model: {params.get('model')!r} is not a known model")
    if spec.tokenizer != "claude-2025" and non_default_sampling(params):
        # Opus 4.7 and later refuse non-default sampling parameters.
        raise RequestRefused("invalid_request_error", f"{non_default_sampling(params)}: non-default sampling "
                                                      f"parameters are not supported on {spec.id}")
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestRefused("invalid_request_error", "max_tokens: a positive integer is required")
    allowed = OUTPUT_300K_MAX if (spec.supports_300k and OUTPUT_300K_BETA in betas) else spec.max_output
    if max_tokens > allowed:
        raise RequestRefused("invalid_request_error",
                             f"max_tokens: {max_tokens} > {allowed}, which is the maximum allowed number of "
                             f"output tokens for {spec.id}")
    if not params.get("messages"):
        raise RequestRefused("invalid_request_error", "messages: at least one message is required")
    if len(json.dumps(params, ensure_ascii=False).encode()) > MAX_PDF_REQUEST_BYTES and has_document(params):
        raise RequestRefused("invalid_request_error", "request too large: a request with a PDF may be at most 32 MB")
    try:
        text = request_text(params, spec.context_window)
        input_tokens = count_request_tokens(params, spec)
    except PdfBlockError as exc:
        raise RequestRefused("invalid_request_error", str(exc)) from None
    return spec, text, input_tokens
