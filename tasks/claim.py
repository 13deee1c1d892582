"""Stage 4 — claiming: this plan's new work recorded in the ledger (queued requests, held ones
waiting for the request that primes their document's cache, waiting combining steps, the
document rows summary.csv reports on), once the budget allows it."""

from __future__ import annotations

from longbatch.errors import BudgetExceededError
from longbatch.ledger import Ledger
from longbatch.piece import PieceKind
from longbatch.records import Claim, NewRequest, PlanRecord
from tasks.plan import Plan
from tasks.priming import release_primed


def plan_records(plan: Plan) -> list[PlanRecord]:
    """The document rows (one per document and prompt) for summary.csv; a split document's
    row carries its parts' fingerprints (and, as `reduction`, its final step's key)."""
    fingerprints = {r.custom_id: r.fingerprint for r in plan.requests}
    parts: dict[tuple[str, str], list[str]] = {}
    for row in plan.rows:
        if row.piece.kind == PieceKind.PART:
            parts.setdefault((row.source, row.prompt), []).append(fingerprints[row.custom_id or ""])
    return [PlanRecord(row, fingerprints.get(row.custom_id or ""), tuple(parts.get((row.source, row.prompt), ())))
            for row in plan.document_rows]


def new_work_usd(plan: Plan, ledger: Ledger) -> float:
    """The worst case of this plan's work that the ledger does not hold yet. Work the ledger
    already holds was paid for (or is in flight) and does not count again."""
    fingerprints = {r.custom_id: r.fingerprint for r in plan.requests}
    known = ledger.known_fingerprints(list(fingerprints.values()))
    known_steps = ledger.known_reductions([s.key for s in plan.reductions])
    # Requests (whole documents and parts) and combining steps; a split document's own row
    # only sums those.
    return sum(row.max_cost_usd for row in plan.rows
               if (row.piece.is_step and row.reduction not in known_steps)
               or (not row.piece.is_step and row.custom_id and fingerprints[row.custom_id] not in known))


def check_budget(plan: Plan, ledger: Ledger, budget: float | None) -> None:
    """Refuse before sending when the new work could cost more than the budget."""
    if budget is None:
        return
    new_cost = new_work_usd(plan, ledger)
    if new_cost > budget:
        raise BudgetExceededError(
            f"This run could cost up to ${new_cost:,.2f} (every granted output token used), over the budget "
            f"of ${budget:,.2f}. Nothing was sent. Lower --max-output-tokens, use fewer documents or "
            f"prompts, or raise --budget-usd. `longbatch plan` shows the cost per document."
        )


def claim_plan(ledger: Ledger, plan: Plan) -> None:
    """Record this plan's new work in the ledger as queued, and the combining steps of split
    documents as waiting. Work the ledger already knows (same fingerprint or recipe, from an
    earlier or a concurrent run) is not claimed again."""
    rows = {r.custom_id: r for r in plan.rows if r.custom_id and not r.piece.is_step}
    known = ledger.known_fingerprints([r.fingerprint for r in plan.requests])
    primers = dict(plan.primers)
    claims = [Claim(NewRequest(req.fingerprint, req.custom_id, req.doc_id, rows[req.custom_id].source,
                               rows[req.custom_id].sha256, req.prompt, req.model, req.max_tokens, req.betas,
                               req.piece, req.links),
                    primers.get(req.fingerprint), rows[req.custom_id].max_cost_usd)
              for req in plan.requests if req.fingerprint not in known]
    # A few transactions for the whole plan, not a commit per request (issue 10).
    ledger.claim_many(claims, [(req.custom_id, req.fingerprint) for req in plan.requests])
    for step in plan.reductions:
        ledger.claim_reduction(step)
    release_primed(ledger)  # a primer done in an earlier run: its readers need not wait
