"""What an API failure means for the user, and whether anything could have been sent.

A connection that never opened (refused, unknown host, a URL the transport cannot use) sent
nothing: it is a plain failure, safe to call so. A connection that opened and then failed
(timeout, reset, a server that hung up before answering) may have delivered the request: for
a batch create that is an unknown outcome, never a failure.
"""

from __future__ import annotations

from typing import Any, TypeVar

import anthropic
import httpx2

from longbatch.errors import ApiAuthError, ApiError, ApiResponseError, ApiUnreachableError
from longbatch.redact import redact

E = TypeVar("E", bound=BaseException)

# Transport errors raised before a single byte of the request left this machine.
_NEVER_CONNECTED = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.UnsupportedProtocol, httpx2.InvalidURL)


def wrapped(exc: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
    """`exc`, or the first exception it wraps (the SDK raises its own errors `from` the
    transport's), that is a `kind`; None when there is none."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    return seen


def never_connected(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) is a connection that never opened."""
    return wrapped(exc, _NEVER_CONNECTED) is not None


def api_url(client: anthropic.Anthropic) -> str:
    return redact(str(client.base_url)) or "the API"


def unreachable(client: anthropic.Anthropic, exc: BaseException) -> ApiUnreachableError:
    cause = exc.__cause__ or exc.__context__ or exc
    return ApiUnreachableError(
        f"Cannot reach the API at {api_url(client)} ({redact(str(cause)) or type(cause).__name__}). Nothing was "
        "sent. Check your network and ANTHROPIC_BASE_URL (unset it to use api.anthropic.com), then run again."
    )


def auth_failed(exc: anthropic.APIStatusError) -> ApiAuthError:
    what = "refused the API key" if exc.status_code == 401 else "refused this key the permission it needs"
    return ApiAuthError(
        f"The API {what} (HTTP {exc.status_code}: {redact(error_text(exc))}). Check ANTHROPIC_API_KEY: it must "
        "be a current key of your organisation (console.anthropic.com > API keys). Nothing was sent."
    )


def error_text(exc: anthropic.APIStatusError) -> str:
    """The API's own error message when the body has one, else the SDK's."""
    body: Any = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return f"{inner.get('type', 'error')}: {inner['message']}"
    return exc.message


def list_models(client: anthropic.Anthropic) -> list[Any]:
    """Every model the API offers (`client.models.list`). This is also the run's first call, so
    it is where an API that cannot be used is found out, before anything is planned or sent:
    an unreachable API, a refused key or an unreadable answer becomes an `ApiError` with what
    to do. Other failures (5xx, 429 after the SDK's retries) are raised as they are, for the
    caller to fall back on the built-in table."""
    try:
        # Few retries: a refused connection should be said in seconds, not after a long backoff.
        return list(client.with_options(max_retries=min(client.max_retries, 2)).models.list(limit=1000))
    except anthropic.APIConnectionError as exc:
        if never_connected(exc):
            raise unreachable(client, exc) from None
        raise
    except anthropic.AuthenticationError as exc:
        raise auth_failed(exc) from None
    except anthropic.PermissionDeniedError as exc:
        raise auth_failed(exc) from None
    except anthropic.APIResponseValidationError as exc:
        raise ApiResponseError(
            f"The API at {api_url(client)} answered the list of models with something that is not the Anthropic "
            f"API's answer ({redact(exc.message)}). Check ANTHROPIC_BASE_URL."
        ) from None
    except anthropic.APIStatusError as exc:
        # 404 is left to the caller: a proxy without the Models API still serves batches.
        if 400 <= exc.status_code < 500 and exc.status_code not in (404, 408, 409, 429):
            raise ApiError(
                f"The API at {api_url(client)} refused the list of models (HTTP {exc.status_code}: "
                f"{redact(error_text(exc))}). Check ANTHROPIC_BASE_URL points at the Anthropic API."
            ) from None
        raise


def probe_api(client: anthropic.Anthropic) -> None:
    """Fail fast, before anything starts, when the API cannot be used at all (see
    `list_models`). A transient failure says nothing about that and is let go: the run asks
    again and falls back on the built-in model table."""
    try:
        list_models(client)
    except (anthropic.APIConnectionError, anthropic.APIStatusError):
        pass


def without_key(exc: BaseException) -> BaseException:
    """`exc` itself, unless its text quotes a key or an auth header: then an `ApiError` with the
    same facts, redacted, so nothing raised to Prefect (which stores a failed run's message)
    or to the user carries the key."""
    text = str(exc)
    if redact(text) == text:
        return exc
    status = f"HTTP {exc.status_code}: " if isinstance(exc, anthropic.APIStatusError) else ""
    detail = error_text(exc) if isinstance(exc, anthropic.APIStatusError) else text
    return ApiError(f"The API failed ({type(exc).__name__}, {status}{redact(detail)}).")
