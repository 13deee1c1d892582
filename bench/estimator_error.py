"""How far the local token estimate is from the authority's count, per document and family.

    python bench/estimator_error.py [--corpus ../shared/corpus]

For every readable corpus document: the request longbatch would send, its local estimate and
upper bound (longbatch/tokens.py), and the simulator's own count of that request (its
count_tokens rule, not tiktoken). "upper/actual" must stay >= 1: a document the estimate
passes as fitting is never too long for the authority.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longbatch.catalog import get_model  # noqa: E402
from simulator.engine import count_request_tokens  # noqa: E402
from tasks.build import build_request  # noqa: E402
from tasks.ingest import Document, discover, read_document  # noqa: E402
from tasks.plan import make_plan  # noqa: E402
from tasks.prompts import load_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    args = parser.parse_args()
    prompt = load_prompt("report", Path("."))
    docs = [d for d in (read_document(p, args.corpus) for p in discover(args.corpus)) if isinstance(d, Document)]
    worst_low, worst_high = float("inf"), 0.0
    for model_id in ("claude-sonnet-4-6", "claude-opus-4-7"):
        model = get_model(model_id)
        print(f"\n{model_id} ({model.tokenizer})")
        print(f"   {'document':44} {'cl100k':>9} {'estimate':>9} {'upper':>9} {'actual':>9} {'est/act':>7} {'up/act':>7}")
        for doc in docs:
            row = make_plan([doc], [prompt], model, None, 1).rows[0]
            actual = count_request_tokens(build_request(doc, prompt, model, 1_000).params, model)
            est, up = row.est_input_tokens / actual, row.upper_input_tokens / actual
            worst_low, worst_high = min(worst_low, up), max(worst_high, est)
            print(f"   {doc.source[-44:]:44} {row.cl100k_tokens:9,} {row.est_input_tokens:9,} "
                  f"{row.upper_input_tokens:9,} {actual:9,} {est:7.2f} {up:7.2f}")
    print(f"\nlowest upper/actual: {worst_low:.2f} (must be >= 1.00); highest estimate/actual: {worst_high:.2f}")


if __name__ == "__main__":
    main()
