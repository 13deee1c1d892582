"""Stage 2 — the fit check: does a document, with its prompt, leave room for a useful output?

Input and output share the context window. Input alone over the window is rejected by the
API; input + max_tokens over it stops early (`model_context_window_exceeded`). So the grant
is the smallest of: what the user asked, what the model allows in a batch, and what the
window leaves after the input's upper-bound estimate and a fixed margin.
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


def needs_exact_count(lower: int, upper: int, model: ModelSpec, requested: int | None, min_output: int) -> bool:
    """True when the estimate's error band straddles a limit, so the estimate alone could
    wrongly refuse a document or shrink its grant: then count_tokens decides."""
    asked = model.max_batch_output if requested is None else requested
    full_grant_certain = upper <= model.context_window - WINDOW_MARGIN - min(asked, model.max_batch_output)
    refusal_certain = lower > model.context_window - WINDOW_MARGIN - min(min_output, asked)
    return not (full_grant_certain or refusal_certain)


def check_fit(input_upper: int, model: ModelSpec, requested: int | None, min_output: int) -> Fit:
    asked = model.max_batch_output if requested is None else requested
    room = model.context_window - input_upper - WINDOW_MARGIN
    granted = min(asked, model.max_batch_output, room)
    floor = min(min_output, asked)
    if granted >= floor and granted > 0:
        return Fit(model.id, model.context_window, input_upper, asked, model.max_batch_output, granted, True)
    reason = (
        f"does not fit: the input needs up to {input_upper:,} tokens and at least {floor:,} output "
        f"tokens are wanted, but the {model.id} window is {model.context_window:,} tokens "
        f"(room left for output: {max(room, 0):,})"
    )
    return Fit(model.id, model.context_window, input_upper, asked, model.max_batch_output, 0, False, reason)
