"""Splitting cost, against the raw libraries, in the same run.

    python bench/split_and_plan.py [--corpus ../shared/corpus]

1. Text: ~2.5M tokens (War and Peace + most of the CUAD contracts). Raw: one tiktoken cl100k
   pass over the text. longbatch: `make_plan` for Sonnet 4.6 (1M) and Sonnet 4.5 (200K), which
   cuts the text into units, counts them, packs and balances parts, renders every part
   request, and plans the combining steps.
2. Native PDF: the IRS manual with every page twice (800 pages). Raw: pypdf copying all pages
   into one new PDF. longbatch: `make_plan --pdf-mode native` on Sonnet 4.5 (100-page ranges).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pypdf import PdfReader, PdfWriter  # noqa: E402

from longbatch.catalog import get_model  # noqa: E402
from longbatch.tokens import cl100k_count  # noqa: E402
from tasks.ingest import read_document  # noqa: E402
from longbatch.piece import PieceKind  # noqa: E402
from tasks.plan import make_plan  # noqa: E402
from tasks.prompts import load_prompt  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    args = parser.parse_args()
    prompt = load_prompt("report", Path("."))
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp)
        text = (args.corpus / "text/war_and_peace_tolstoy.txt").read_text(encoding="utf-8")
        text += "\n\n" + (args.corpus / "text/cuad_contracts_concat_112.txt").read_text(encoding="utf-8")[:5_600_000]
        (inbox / "archive.txt").write_text(text, encoding="utf-8")
        doc = read_document(inbox / "archive.txt", inbox)
        _, raw = timed(lambda: cl100k_count(text))
        print(f"text: {len(text):,} chars, {doc.body_cl100k:,} cl100k tokens; tiktoken pass {raw:.2f} s")
        for model_id in ("claude-sonnet-4-6", "claude-sonnet-4-5"):
            plan, took = timed(lambda m=model_id: make_plan([doc], [prompt], get_model(m), None, 8_192))
            parts = [r for r in plan.rows if r.piece.kind == PieceKind.PART]
            steps = [r for r in plan.rows if r.piece.is_step]
            sizes = [r.upper_input_tokens for r in parts]
            print(f"  {model_id}: {len(parts)} parts ({min(sizes):,}–{max(sizes):,} upper tokens), {len(steps)} "
                  f"step(s); plan {took:.2f} s = {took / raw:.1f}x one tiktoken pass")

        reader = PdfReader(args.corpus / "pdf/long_irs_irm_2.3.59_400p.pdf")
        writer = PdfWriter()
        for page in list(reader.pages) * 2:
            writer.add_page(page)
        with (inbox / "irm-twice.pdf").open("wb") as f:
            writer.write(f)
        pdf = read_document(inbox / "irm-twice.pdf", inbox)

        def raw_copy() -> int:
            w = PdfWriter()
            for page in PdfReader(inbox / "irm-twice.pdf").pages:
                w.add_page(page)
            out = io.BytesIO()
            w.write(out)
            return len(out.getvalue())

        _, raw_pdf = timed(raw_copy)
        plan, took = timed(lambda: make_plan([pdf], [prompt], get_model("claude-sonnet-4-5"), None, 8_192,
                                             pdf_mode="native"))
        parts = [r for r in plan.rows if r.piece.kind == PieceKind.PART]
        print(f"native: 800 pages; pypdf copy of all pages {raw_pdf:.2f} s; plan with {len(parts)} page ranges "
              f"{took:.2f} s = {took / raw_pdf:.1f}x")


if __name__ == "__main__":
    main()
