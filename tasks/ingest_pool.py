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

import heapq
import os
import pickle
import selectors
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.ingest import (Document, IngestFailure, RealPaths, cached_sha256, display_name, entry_problem, kind_of,
                          make_doc_id, read_cached, read_document)
from tasks.ingest_cache import IngestCache

# Below this much to read (files not in the cache), reading in this process is faster.
POOL_MIN_BYTES = 4 * 1024 * 1024
POOL_MIN_FILES = 2
# Jobs sent ahead of the one the caller waits for, per worker.
AHEAD_PER_WORKER = 2
# Small files go to a worker many at a time: one round trip each costs more than reading a
# file of a few KB (10,000 of 3 KB on 2 cores: slower than reading them in this process).
# A worker that dies mid-job loses none of them: each is read again in a job of its own.
JOB_FILES = 64
JOB_BYTES = 1024 * 1024


def default_workers() -> int:
    """One worker per core this process may use."""
    count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if count is not None:
        return count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


class WorkerPool:
    """Worker processes for reads that follow one another (a run's ingest tasks), so that they
    are started once: when a read first needs them, and only when there is enough to read,
    by that read or by all of them (`run_bytes`: what the reads sharing the pool read in all;
    a run's tasks of 1,000 small files are each below POOL_MIN_BYTES). `close()` ends them."""

    def __init__(self, workers: int | None = None, run_bytes: int = 0) -> None:
        self.size = workers or default_workers()
        self.run_bytes = run_bytes
        self.idle: list[_Worker] = []
        self.closed = False

    def wanted(self, files: int, read_bytes: int) -> bool:
        return self.size > 1 and files >= POOL_MIN_FILES and (
            bool(self.idle) or max(read_bytes, self.run_bytes) >= POOL_MIN_BYTES)

    def take(self, n: int) -> list[_Worker]:
        alive = []
        for worker in self.idle:  # one that died idle (the OOM killer) must not fail a document
            if worker.proc.poll() is None:
                alive.append(worker)
            else:
                worker.stop()
        taken, self.idle = alive[:n], alive[n:]
        return taken + [_Worker() for _ in range(n - len(taken))]

    def give_back(self, workers: list[_Worker]) -> None:
        self.idle += workers
        if self.closed:  # a read that ended after its pool (a generator closed late): none may linger
            self.close()

    def close(self) -> None:
        self.closed = True
        for worker in self.idle:
            worker.stop()
        self.idle = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_documents(paths: Iterable[Path], inbox: Path, native_pdf: bool = False, cache_dir: Path | None = None,
                   workers: int | None = None, follow_links: bool = False,
                   pool: WorkerPool | None = None) -> Iterator[Document | IngestFailure]:
    """`read_document` for every path, in order, on up to `workers` processes (default: one per
    core), or `pool`'s. With `cache_dir` (the data dir's `cache/`), an unchanged file is not
    read again."""
    paths = list(paths)
    own_pool = pool is None
    pool = pool or WorkerPool(workers)
    # Hashing first (only hashes are kept): cached documents are loaded when their turn comes.
    # An entry that is not read at all (a FIFO, a link out of the inbox) is not hashed either.
    checked = RealPaths(inbox)
    readable = [entry_problem(path, inbox, follow_links, checked) is None for path in paths]
    hashes = [cached_sha256(path, native_pdf, cache_dir) if ok else None for path, ok in zip(paths, readable)]
    to_read = [path for path, sha in zip(paths, hashes, strict=True) if sha is None]
    pooled = pool.wanted(len(to_read), total_bytes(p for p, ok, sha in zip(paths, readable, hashes)
                                                   if ok and sha is None and kind_of(p)))
    # Each entry is checked again as it is read (it may have changed since), with folders' real
    # paths taken afresh.
    reading = RealPaths(inbox)
    results = _read_in_workers(to_read, inbox, native_pdf, cache_dir, pool, follow_links) if pooled \
        else (read_document(path, inbox, native_pdf, cache_dir, follow_links, reading) for path in to_read)
    try:
        for path, sha in zip(paths, hashes, strict=True):
            if sha is None:
                yield next(results)
            else:  # an entry found damaged now is read again (and rewritten)
                yield (read_cached(path, inbox, sha, native_pdf, cache_dir, reading)
                       or read_document(path, inbox, native_pdf, cache_dir, follow_links, reading))
    finally:
        results.close()  # a caller that stops early stops the workers reading for it now
        if own_pool:
            pool.close()
    if cache_dir is not None and to_read:
        IngestCache(cache_dir).prune()


def total_bytes(paths: Iterable[Path]) -> int:
    """The paths' sizes added up (one that cannot be stat'ed counts as empty)."""
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
        self.job: list[int] | None = None  # the indices of the documents it is reading

    def send(self, job: list[int], paths: list[Path], args: tuple) -> None:
        self.job = job
        try:
            pickle.dump((paths, *args), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except OSError:  # the worker is gone: its output ends, and its documents are read again
            pass

    def receive(self) -> list[Document | IngestFailure]:
        items = pickle.load(self.proc.stdout)
        self.job = None
        return items

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # an idle worker ends at the end of its input
        except OSError:
            pass
        if self.job is not None:
            self.proc.kill()  # the caller stopped early: the documents it was reading are not wanted
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def size_chunks(paths: list[Path], max_files: int, max_bytes: int) -> Iterator[list[int]]:
    """The paths' indices in order, in chunks of at most `max_files` and, past a chunk's first
    file, `max_bytes` (an entry that cannot be stat'ed counts as empty: reading it says why)."""
    chunk: list[int] = []
    size = 0
    for i, path in enumerate(paths):
        try:
            length = os.stat(path).st_size
        except OSError:
            length = 0
        if chunk and (len(chunk) == max_files or size + length > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += length
    if chunk:
        yield chunk


def _read_in_workers(paths: list[Path], inbox: Path, native_pdf: bool, cache_dir: Path | None,
                     pool: WorkerPool, follow_links: bool = False) -> Iterator[Document | IngestFailure]:
    args = (inbox, native_pdf, cache_dir, follow_links)
    # Jobs to send, first index first: a dead job's files, read again one by one, go before
    # every later job, so the document the caller waits for is always sent or being read.
    # Made in order, the list is already a heap.
    queue = [(job[0], job) for job in size_chunks(paths, JOB_FILES, JOB_BYTES)]  # small files together
    open_jobs = AHEAD_PER_WORKER * pool.size  # jobs sent whose documents are not all yielded yet
    sent: list[list[int]] = []
    done: dict[int, Document | IngestFailure] = {}
    yielded = 0
    idle = pool.take(min(pool.size, len(queue)))
    busy: list[_Worker] = []
    selector = selectors.DefaultSelector()
    try:
        while yielded < len(paths):
            sent = [job for job in sent if job[-1] >= yielded]
            # Past `open_jobs` only when nothing is being read: waiting then would wait forever.
            while idle and queue and (len(sent) < open_jobs or not busy):
                worker, (_, job) = idle.pop(), heapq.heappop(queue)
                worker.send(job, [paths[i] for i in job], args)
                selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)
                busy.append(worker)
                sent.append(job)
            if yielded in done:
                yield done.pop(yielded)
                yielded += 1
                continue
            if not busy:  # never: every document is read, queued or being read
                raise RuntimeError(f"ingest lost track of {paths[yielded]}")
            for key, _ in selector.select():
                worker = key.data
                selector.unregister(key.fileobj)
                busy.remove(worker)
                job = worker.job
                try:
                    done.update(zip(job, worker.receive(), strict=True))
                    idle.append(worker)
                except (EOFError, pickle.UnpicklingError, OSError):
                    if len(job) == 1:
                        done[job[0]] = _died(paths[job[0]], inbox, worker.proc)
                    else:  # which one killed it is not known: each is read again on its own
                        sent = [j for j in sent if j is not job]
                        for i in job:
                            heapq.heappush(queue, (i, [i]))
                    worker.job = None
                    worker.stop()
                    idle.append(_Worker())
    finally:
        selector.close()
        for worker in busy:  # the caller stopped early: what they are reading is not wanted
            worker.stop()
        pool.give_back(idle)


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
