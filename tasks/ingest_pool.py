"""Read many documents on every core, in worker processes, in input order.

PDFium is not thread-safe and pypdf holds the GIL, so parallel reading needs processes. A file
found in the ingest cache (tasks/ingest_cache.py) costs only its hash, in this process; the
rest are read by at most one worker process per core (`python -m tasks.ingest_worker`), one
document at a time each, with a bounded number ahead of the caller so that memory holds a few
documents, not the inbox. A worker that dies (PDFium crashing on a hostile file, or the OS
killing it) loses only the document it was reading, which ends as a readable failure; a new
worker takes its place.

Workers are plain subprocesses rather than multiprocessing's: spawn and forkserver would import
the caller's `__main__` (the CLI, and Prefect with it) in every worker, and fork would copy a
process whose Prefect threads may hold locks. Small jobs are read in this process: starting
workers (~0.5 s to import PDFium and the tokenizer) would cost more than it saves.
"""

from __future__ import annotations

import os
import pickle
import selectors
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.ingest import (Document, IngestFailure, cached_sha256, display_name, entry_problem, kind_of, make_doc_id,
                          read_cached, read_document)
from tasks.ingest_cache import IngestCache

# Below this much to read (files not in the cache), reading in this process is faster.
POOL_MIN_BYTES = 4 * 1024 * 1024
POOL_MIN_FILES = 2
# Documents read ahead of the one the caller waits for, per worker.
AHEAD_PER_WORKER = 2


def default_workers() -> int:
    """One worker per core this process may use."""
    count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if count is not None:
        return count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def read_documents(paths: Iterable[Path], inbox: Path, native_pdf: bool = False, cache_dir: Path | None = None,
                   workers: int | None = None, follow_links: bool = False) -> Iterator[Document | IngestFailure]:
    """`read_document` for every path, in order, on up to `workers` processes (default: one per
    core). With `cache_dir` (the data dir's `cache/`), an unchanged file is not read again."""
    paths = list(paths)
    workers = workers or default_workers()
    real_inbox = os.path.realpath(inbox)  # once, not once per entry
    # Hashing first (only hashes are kept): cached documents are loaded when their turn comes.
    # An entry that is not read at all (a FIFO, a link out of the inbox) is not hashed either.
    readable = [entry_problem(path, inbox, follow_links, real_inbox) is None for path in paths]
    hashes = [cached_sha256(path, native_pdf, cache_dir) if ok else None for path, ok in zip(paths, readable)]
    to_read = [path for path, sha in zip(paths, hashes, strict=True) if sha is None]
    pooled = (workers > 1 and len(to_read) >= POOL_MIN_FILES
              and _bytes(p for p, ok, sha in zip(paths, readable, hashes) if ok and sha is None and kind_of(p))
              >= POOL_MIN_BYTES)
    results = _read_in_workers(to_read, inbox, native_pdf, cache_dir, workers, follow_links) if pooled \
        else (read_document(path, inbox, native_pdf, cache_dir, follow_links, real_inbox) for path in to_read)
    try:
        for path, sha in zip(paths, hashes, strict=True):
            if sha is None:
                yield next(results)
            else:  # an entry found damaged now is read again (and rewritten)
                yield read_cached(path, inbox, sha, native_pdf, cache_dir) or read_document(path, inbox, native_pdf,
                                                                                           cache_dir)
    finally:
        results.close()  # a caller that stops early stops the workers now
    if cache_dir is not None and to_read:
        IngestCache(cache_dir).prune()


def _bytes(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


class _Worker:
    def __init__(self) -> None:
        # The worker imports what this process can: same interpreter, same import path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.ingest_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.job: tuple[int, Path] | None = None

    def send(self, index: int, path: Path, args: tuple) -> None:
        self.job = (index, path)
        try:
            pickle.dump((path, *args), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except OSError:  # the worker is gone: its output ends, and this document fails as a dead worker's
            pass

    def receive(self) -> Document | IngestFailure:
        item = pickle.load(self.proc.stdout)
        self.job = None
        return item

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # an idle worker ends at the end of its input
        except OSError:
            pass
        if self.job is not None:
            self.proc.kill()  # the caller stopped early: the document it was reading is not wanted
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _read_in_workers(paths: list[Path], inbox: Path, native_pdf: bool, cache_dir: Path | None,
                     workers: int, follow_links: bool = False) -> Iterator[Document | IngestFailure]:
    args = (inbox, native_pdf, cache_dir, follow_links)
    ahead = AHEAD_PER_WORKER * workers
    done: dict[int, Document | IngestFailure] = {}
    sent = yielded = 0
    idle = [_Worker() for _ in range(min(workers, len(paths)))]
    busy: list[_Worker] = []
    selector = selectors.DefaultSelector()
    try:
        while yielded < len(paths):
            while idle and sent < len(paths) and sent - yielded < ahead:
                worker = idle.pop()
                worker.send(sent, paths[sent], args)
                selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)
                busy.append(worker)
                sent += 1
            if yielded in done:
                yield done.pop(yielded)
                yielded += 1
                continue
            for key, _ in selector.select():
                worker = key.data
                selector.unregister(key.fileobj)
                busy.remove(worker)
                index, path = worker.job
                try:
                    done[index] = worker.receive()
                    idle.append(worker)
                except (EOFError, pickle.UnpicklingError, OSError):
                    done[index] = _died(path, inbox, worker.proc)
                    worker.job = None
                    worker.stop()
                    idle.append(_Worker())
    finally:
        selector.close()
        for worker in idle + busy:
            worker.stop()


def _died(path: Path, inbox: Path, proc: subprocess.Popen) -> IngestFailure:
    rel = display_name(path.relative_to(inbox).as_posix())
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        code = None
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
    return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", 0, "unreadable",
                         f"the process reading this {kind_of(path) or 'file'} {how}: the file may be damaged or built "
                         "to crash a reader, or the machine ran out of memory")
