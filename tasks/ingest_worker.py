"""A worker process of tasks/ingest_pool.py: reads the documents it is sent, a job at a time.

    python -m tasks.ingest_worker

Jobs (a list of paths) come on stdin and their documents go back on the original stdout, a list
per job, both pickled (the parent
started this process and trusts it); anything a library prints goes to stderr instead. The
worker ends at the end of its input.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import sys
from pathlib import Path

from longbatch.failpoints import failpoint
from longbatch.memory import fix_mmap_threshold
from tasks.ingest import Document, IngestFailure, RealPaths, display_name, make_doc_id, read_document

log = logging.getLogger(__name__)


def read_one(path: Path, inbox: Path, native_pdf: bool, cache_dir: Path | None, follow_links: bool = False,
             real_paths: RealPaths | None = None) -> Document | IngestFailure:
    rel = display_name(path.relative_to(inbox).as_posix())
    failpoint(f"reading:{rel}")  # tests: this worker dies here, as if PDFium had crashed
    try:
        return read_document(path, inbox, native_pdf, cache_dir, follow_links, real_paths)
    except Exception as exc:  # noqa: BLE001 - a bug on one file must not end the others' worker
        log.exception("reading %s failed", rel)
        return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", 0, "unreadable",
                             f"reading it failed unexpectedly: {type(exc).__name__}: {exc}")


def main() -> None:
    # What is imported now lives as long as the worker: keep the garbage collector from walking
    # it again at every collection that extraction's allocations trigger.
    import pypdfium2  # noqa: F401 - imported here so that the freeze below covers it

    from longbatch.tokens import cl100k_count

    cl100k_count("")  # loads the encoding
    gc.freeze()
    fix_mmap_threshold()
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    while True:
        try:
            paths, inbox, native_pdf, cache_dir, follow_links = pickle.load(requests)
        except EOFError:
            return
        real_paths = RealPaths(inbox)
        items = [read_one(path, inbox, native_pdf, cache_dir, follow_links, real_paths) for path in paths]
        pickle.dump(items, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    main()
