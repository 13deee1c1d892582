"""Ingest on every core, never twice: ratios against bare pypdfium2 and pypdf, in one run.

    python bench/ingest_parallel.py [--corpus ../shared/corpus] [--skip-plan] [--skip-pypdf]

Over every PDF in the corpus (~3,400 pages; the damaged and encrypted ones cost nothing):
1. bare pypdfium2 on one core: open each PDF, text of every page: the yardstick;
2. `read_documents` with 1 worker (this process) and with 2 worker processes, no cache;
3. `read_documents` with the cache: a first read, then the unchanged inbox again;
4. `build_plan` in this process, then `longbatch plan` (the CLI: a new process importing Prefect
   and the SDK) on a fresh data dir, each then re-planned;
5. pypdf `extract_text` vs bare pypdfium2 on four long PDFs (pypdf takes minutes on all);
6. `gc.freeze()`: reading in a process that imported Prefect, with and without it.
Ratios above 1 mean longbatch is slower than the yardstick by that factor.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FOUR_LONG = ["long_freeculture_lessig_2004_352p.pdf", "long_irs_irm_2.3.59_400p.pdf",
             "long_mupdf_explored_book_285p.pdf", "long_who_hcv_guidelines_2022_155p.pdf"]


def bare_pdfium(paths: list[Path]) -> tuple[int, int]:
    import pypdfium2 as pdfium

    pages = chars = 0
    for path in paths:
        try:
            pdf = pdfium.PdfDocument(path.read_bytes())
        except pdfium.PdfiumError:
            continue
        for i in range(len(pdf)):
            page = pdf[i]
            textpage = page.get_textpage()
            chars += len(textpage.get_text_range())
            textpage.close()
            page.close()
        pages += len(pdf)
        pdf.close()
    return pages, chars


def bare_pypdf(paths: list[Path]) -> int:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
    pages = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            reader = PdfReader(io.BytesIO(path.read_bytes()))
            pages += sum(1 for p in reader.pages if p.extract_text() is not None)
    return pages


def ingest(paths: list[Path], inbox: Path, workers: int, cache_dir: Path | None) -> int:
    from tasks.ingest_pool import read_documents

    return sum(getattr(d, "page_count", 0) or 0 for d in read_documents(paths, inbox, cache_dir=cache_dir,
                                                                         workers=workers))


def cpu_now() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Timing:
    """Wall and CPU seconds (this process and its children) of one call: on a shared machine
    the wall clock also measures the neighbours."""

    def __init__(self, fn, *args) -> None:
        start, cpu = time.perf_counter(), cpu_now()
        self.out = fn(*args)
        self.wall, self.cpu = time.perf_counter() - start, cpu_now() - cpu


def row(what: str, t: Timing | float, base: Timing | float, note: str = "") -> None:
    wall, base_wall = getattr(t, "wall", t), getattr(base, "wall", base)
    cpu = f"cpu {t.cpu:6.2f} s" if isinstance(t, Timing) else " " * 12
    print(f"  {what:<58} {wall:7.2f} s  {wall / base_wall:6.3f}x  {cpu}  {note}")


GC_PROBE = """
import gc, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import prefect, flows.process  # what a flow run has imported before it reads
from tasks.ingest import read_document
if {freeze}:
    gc.freeze()
paths = [Path(p) for p in {paths!r}]
start = time.process_time()  # CPU time: what garbage collection costs, whatever the neighbours do
for p in paths:
    read_document(p, p.parent)
print(time.process_time() - start)
"""


def gc_probe(paths: list[Path], freeze: bool) -> float:
    code = GC_PROBE.format(repo=str(REPO), freeze=freeze, paths=[str(p) for p in paths])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--skip-pypdf", action="store_true")
    args = parser.parse_args()
    import pypdf
    import pypdfium2

    work = Path(tempfile.mkdtemp(prefix="longbatch-bench-"))
    inbox = work / "data" / "inbox"
    shutil.copytree(args.corpus / "pdf", inbox)
    os.chmod(inbox, 0o755)
    paths = sorted(inbox.glob("*.pdf"))
    print(f"pypdfium2 {pypdfium2.PYPDFIUM_INFO}, pypdf {pypdf.__version__}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")

    t_bare = Timing(bare_pdfium, paths)
    pages, chars = t_bare.out
    print(f"\n1-3. {len(paths)} corpus PDFs, {pages:,} pages, {chars:,} characters (bare pypdfium2)")
    row("bare pypdfium2, one core (the yardstick)", t_bare, t_bare)
    t_one = Timing(ingest, paths, inbox, 1, None)
    row("read_documents, 1 worker (in process), no cache", t_one, t_bare, f"{t_one.out:,} pages as documents")
    t_two = Timing(ingest, paths, inbox, 2, None)
    row("read_documents, 2 worker processes, no cache", t_two, t_bare, f"{t_two.wall / t_one.wall:.2f}x of 1 worker")
    cache_dir = work / "cache"
    t_cold = Timing(ingest, paths, inbox, 2, cache_dir)
    t_warm = Timing(ingest, paths, inbox, 2, cache_dir)
    row("read_documents, 2 workers, cache empty (first read)", t_cold, t_bare)
    row("read_documents, unchanged inbox again (cache)", t_warm, t_bare, f"{t_warm.wall / t_cold.wall:.3f}x of the first")
    print(f"  (load average {os.getloadavg()[0]:.1f})")

    if not args.skip_plan:
        from flows.planning import build_plan
        from longbatch.settings import Settings

        settings = Settings.given(data_dir=work / "plan-in-process", inbox=inbox)
        t_bp = Timing(build_plan, settings)
        t_rebp = Timing(build_plan, settings)
        print("\n4. planning the same inbox: build_plan in this process (imports done), then the CLI")
        row("build_plan, first (cache empty; 2 workers)", t_bp, t_bare)
        row("build_plan, unchanged inbox", t_rebp, t_bare, f"{t_rebp.wall / t_bp.wall:.3f}x of the first")

        cli = [str(Path(sys.executable).with_name("longbatch")), "plan", "--data-dir", str(work / "data")]
        env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}

        def plan() -> None:
            subprocess.run(cli, env=env, capture_output=True, check=True)

        t_plan = Timing(plan)
        t_replan = Timing(plan)
        row("longbatch plan, first (cache empty)", t_plan, t_bare)
        row("longbatch plan, unchanged inbox", t_replan, t_bare, f"{t_replan.wall / t_plan.wall:.3f}x of the first")
        print(f"  (load average {os.getloadavg()[0]:.1f})")

    if not args.skip_pypdf:
        four = [inbox / name for name in FOUR_LONG]
        t_pdfium4 = Timing(bare_pdfium, four)
        pages4 = t_pdfium4.out[0]
        t_pypdf4 = Timing(bare_pypdf, four)
        t_ours4 = Timing(ingest, four, inbox, 1, None)
        print(f"\n5. four long PDFs, {pages4:,} pages")
        row("bare pypdfium2, one core", t_pdfium4, t_pdfium4)
        row("bare pypdf extract_text, one core", t_pypdf4, t_pdfium4)
        row("read_documents, 1 worker (PDFium, cleaned, counted)", t_ours4, t_pdfium4,
            f"{t_ours4.wall / t_pypdf4.wall:.3f}x of pypdf")

    four = [inbox / name for name in FOUR_LONG]
    t_plain = min(gc_probe(four, False) for _ in range(3))
    t_frozen = min(gc_probe(four, True) for _ in range(3))
    print("\n6. read_document in process after importing Prefect (four long PDFs), CPU seconds, best of 3")
    row("without gc.freeze()", t_plain, t_plain)
    row("with gc.freeze() after the imports", t_frozen, t_plain)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
