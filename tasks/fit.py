"""Stage 2 — the fit check: does a document, with its prompt, leave room for a useful output?

Input and output share the context window. Input alone over the window is rejected by the
API; input + max_tokens over it stops early (`model_context_window_exceeded`). So the grant
is the smallest of: what the user asked, what the model allows in a batch, and what the
window leaves after the input's upper-bound estimate and a fixed margin.

`OutputBudget` is the one place that arithmetic is done: what is asked, the least output
worth sending (the floor), and the room a window leaves. Whole documents, parts and
combining steps are all planned with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from longbatch.catalog import ModelSpec

# Tokens kept free on top of the estimate's error band: role markers and formatting the
# estimate does not see.
WINDOW_MARGIN = 1_024


@dataclass(frozen=True)
class Fit:
    model: str
    window: int
    input_upper: int  # upper-bound input tokens (estimate plus error band)
    requested: int
    model_max: int  # most output a batch request may ask of this model
    granted: int  # max_tokens to send; 0 when it does not fit
    fits: bool
    reason: str | None = None


@dataclass(frozen=True)
class OutputBudget:
    """The output a run asks per request on one model, and what a window leaves for it."""
    model: ModelSpec
    requested: int | None  # None: the most the model allows in a batch
    min_output: int

    @property
    def asked(self) -> int:
        """What each request asks: the user's figure, never more than a batch allows."""
        most = self.model.max_batch_output
        return most if self.requested is None else min(self.requested, most)

    @property
    def floor(self) -> int:
        """Less output than this is not worth sending: the document does not fit."""
        return min(self.min_output, self.asked)

    @property
    def free(self) -> int:
        """The window input and output share, less the margin."""
        return self.model.context_window - WINDOW_MARGIN

    def room(self, input_upper: int) -> int:
        """Output the window leaves after an input of at most `input_upper` tokens."""
        return self.free - input_upper

    def fit(self, input_upper: int) -> Fit:
        model, room = self.model, self.room(input_upper)
        granted = min(self.asked, room)
        if granted >= self.floor and granted > 0:
            return Fit(model.id, model.context_window, input_upper, self.asked, model.max_batch_output, granted, True)
        reason = (
            f"does not fit: the input needs up to {input_upper:,} tokens and at least {self.floor:,} output "
            f"tokens are wanted, but the {model.id} window is {model.context_window:,} tokens "
            f"(room left for output: {max(room, 0):,})"
        )
        return Fit(model.id, model.context_window, input_upper, self.asked, model.max_batch_output, 0, False, reason)

    def needs_exact_count(self, lower: int, upper: int) -> bool:
        """True when the estimate's error band straddles a limit, so the estimate alone could
        wrongly refuse a document or shrink its grant: then count_tokens decides."""
        full_grant_certain = upper <= self.room(0) - self.asked
        refusal_certain = lower > self.room(0) - self.floor
        return not (full_grant_certain or refusal_certain)


def check_fit(input_upper: int, model: ModelSpec, requested: int | None, min_output: int) -> Fit:
    return OutputBudget(model, requested, min_output).fit(input_upper)


def needs_exact_count(lower: int, upper: int, model: ModelSpec, requested: int | None, min_output: int) -> bool:
    return OutputBudget(model, requested, min_output).needs_exact_count(lower, upper)
