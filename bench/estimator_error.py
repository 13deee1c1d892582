"""How far the local token estimate is from the authority's count, per document and family.

    python bench/estimator_error.py [--corpus ../shared/corpus]

For every readable corpus document, in text and native PDF mode: each request longbatch would
send (the whole document, or each part of a split one), its local estimate and upper bound
(longbatch/tokens.py, tasks/native.py), and the simulator's own count of that request (its
count_tokens rule, not tiktoken; page images by their size). "upper/actual" must stay >= 1: a document the estimate
passes as fitting is never too long for the authority.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longbatch.catalog import get_model  # noqa: E402
from simulator.requests import count_request_tokens  # noqa: E402
from tasks.ingest import Document, discover, read_document  # noqa: E402
from tasks.plan import make_plan  # noqa: E402
from tasks.prompts import load_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    parser.add_argument("--skip-native", action="store_true", help="text mode only")
    args = parser.parse_args()
    prompt = load_prompt("report", Path("."))
    docs = [d for d in (read_document(p, args.corpus) for p in discover(args.corpus)) if isinstance(d, Document)]
    worst_low, worst_high = float("inf"), 0.0
    modes = ("text",) if args.skip_native else ("text", "native")
    for model_id in ("claude-sonnet-4-6", "claude-opus-4-7"):
        model = get_model(model_id)
        for mode in modes:
            print(f"\n{model_id} ({model.tokenizer}), {mode} mode")
            print(f"   {'document (part)':50} {'cl100k':>9} {'estimate':>9} {'upper':>9} {'actual':>9} "
                  f"{'est/act':>7} {'up/act':>7}")
            for doc in docs:
                if mode == "native" and doc.kind != "pdf":
                    continue
                plan = make_plan([doc], [prompt], model, None, 1, pdf_mode=mode)
                rows = {r.custom_id: r for r in plan.rows if r.custom_id}
                for req in plan.requests:  # the whole document, or each part it was split into
                    row = rows[req.custom_id]
                    actual = count_request_tokens(req.params, model)
                    est, up = row.est_input_tokens / actual, row.upper_input_tokens / actual
                    worst_low, worst_high = min(worst_low, up), max(worst_high, est)
                    label = doc.source[-42:] + (f" ({row.part})" if row.part else "")
                    print(f"   {label:50} {row.cl100k_tokens:9,} {row.est_input_tokens:9,} "
                          f"{row.upper_input_tokens:9,} {actual:9,} {est:7.2f} {up:7.2f}")
    print(f"\nlowest upper/actual: {worst_low:.2f} (must be >= 1.00); highest estimate/actual: {worst_high:.2f}")


if __name__ == "__main__":
    main()
