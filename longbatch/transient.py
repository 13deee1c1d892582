"""Which API failures are worth another try, and the one guard that tolerates them.

An idempotent call (retrieve, list, results, count_tokens, the Models API) that fails with a
transient error is logged and left for the next round; anything else is raised. `create` is
never run through here: a create's unknown outcome is resolved by recovery, not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anthropic
import httpx2

from longbatch.api_errors import without_key
from longbatch.errors import IncompleteDownloadError

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try on an idempotent call (the SDK has already retried a few)."""
    # httpx2 is the SDK's transport: a stream cut mid-body surfaces as its TransportError.
    if isinstance(exc, (anthropic.APIConnectionError, IncompleteDownloadError, httpx2.TransportError)):
        return True
    return isinstance(exc, anthropic.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500)


def tolerate_transient(call: Callable[[], T], fallback: T, what: str, log: logging.Logger | logging.LoggerAdapter,
                       also: tuple[type[BaseException], ...] = ()) -> T:
    """`call()`, or `fallback` when it fails transiently (or with one of `also`): the failure
    is logged as `what` and left for the next round. Anything else is raised (redacted, if its
    text quotes a key: Prefect stores a failed run's message)."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - only transient errors are tolerated
        if not (is_transient(exc) or isinstance(exc, also)):
            if without_key(exc) is not exc:
                raise without_key(exc) from None
            raise
        log.warning("%s (%s)", what, type(exc).__name__)
        return fallback
