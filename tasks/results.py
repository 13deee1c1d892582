"""Stage 5 — results: every line of a batch's results file, mapped to an `Outcome`.

Every member of the SDK's result union is handled (succeeded, errored, canceled, expired),
and a succeeded message that stopped early or refused is marked, never passed off as whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from anthropic.types.beta.messages import (
    BetaMessageBatchCanceledResult,
    BetaMessageBatchErroredResult,
    BetaMessageBatchExpiredResult,
    BetaMessageBatchIndividualResponse,
    BetaMessageBatchSucceededResult,
)

from longbatch.redact import redact
from longbatch.cache import CachedUsage
from longbatch.records import CANCELED_BY_USER

CANCELED_MESSAGE = ("canceled by user: its batch was canceled before it ran; `longbatch collect --resend-canceled` "
                    "sends it again")
TRUNCATING_STOPS = {"max_tokens", "model_context_window_exceeded"}
# Errors that will fail the same way again: fix the request, never resend it as is.
PERMANENT_ERRORS = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                    "request_too_large", "billing_error"}


@dataclass(frozen=True)
class Outcome:
    custom_id: str
    result_type: str  # succeeded | errored | canceled | expired
    text: str = ""
    stop_reason: str | None = None
    model: str | None = None
    message_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    error_type: str | None = None
    error_message: str | None = None
    cache_write_1h_tokens: int = 0  # the part of cache_creation_tokens written with the 1 h TTL

    @property
    def usage(self) -> CachedUsage:
        """Its tokens by how they are billed."""
        return CachedUsage(self.input_tokens, self.output_tokens, self.cache_creation_tokens - self.cache_write_1h_tokens,
                           self.cache_write_1h_tokens, self.cache_read_tokens)

    @property
    def truncated(self) -> bool:
        return self.stop_reason in TRUNCATING_STOPS

    @property
    def refused(self) -> bool:
        return self.stop_reason == "refusal"

    @property
    def retryable(self) -> bool:
        """Not billed and may succeed if sent again. Canceled requests are not: longbatch never
        cancels on its own, so a person stopped them (`--resend-canceled` sends them again)."""
        if self.result_type == "expired":
            return True
        return self.result_type == "errored" and self.error_type not in PERMANENT_ERRORS


def to_outcome(line: bytes | str) -> Outcome:
    response = BetaMessageBatchIndividualResponse.model_validate(json.loads(line))
    cid = response.custom_id
    match response.result:
        case BetaMessageBatchSucceededResult(message=msg):
            usage = msg.usage
            return Outcome(
                cid, "succeeded",
                text="".join(block.text for block in msg.content if block.type == "text"),
                stop_reason=msg.stop_reason, model=msg.model, message_id=msg.id,
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                cache_creation_tokens=usage.cache_creation_input_tokens or 0,
                cache_read_tokens=usage.cache_read_input_tokens or 0,
                # Without the breakdown the TTL is unknown: counted at the 1 h rate, the higher.
                cache_write_1h_tokens=(usage.cache_creation.ephemeral_1h_input_tokens if usage.cache_creation
                                       else usage.cache_creation_input_tokens or 0),
            )
        case BetaMessageBatchErroredResult(error=err):
            # The API's message is stored and shown: never with a key a server echoed into it.
            return Outcome(cid, "errored", error_type=err.error.type, error_message=redact(err.error.message))
        case BetaMessageBatchCanceledResult():
            return Outcome(cid, "canceled", error_type=CANCELED_BY_USER, error_message=CANCELED_MESSAGE)
        case BetaMessageBatchExpiredResult():
            return Outcome(cid, "expired", error_message="the batch reached its 24-hour limit before this request ran")
    raise ValueError(f"unknown result type in line for {cid}")


def read_outcomes(path: Path) -> Iterator[Outcome]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield to_outcome(line)
