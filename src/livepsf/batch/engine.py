"""Run a batch on a Dask cluster: one task per frame, outputs written by the client frame by frame.

**Engine choice.** Dask (``dask.distributed``) is an *optional* extra, ``pip install 'livepsf[dask]'``,
used only when asked for (``--scheduler``). The one-machine commands keep their own small engines
(in-process mapping; the journalled :class:`~livepsf.acquisition.jobs.DeconvolutionQueue`, which the
live window also uses to deconvolve recordings as they close): an acquisition PC should not need a
scheduler, its ports and a dozen more packages to deconvolve one recording, and a facility that has
outgrown one machine already runs Dask and gets scheduling, retries, worker restarts and a dashboard
from it instead of from livepsf. Both engines share the per-frame code and the output and resume
rules, so they make the same files.

**Flow.** :func:`run_batch` expands the inputs (files, OME-Zarr, folders of them), counts their frames
without reading pixels, and for each input either finds an output already made with the same settings
(done), or opens its :class:`~livepsf.framestore.FrameStore` and submits one task per *missing* frame
(:func:`livepsf.batch.tasks.compute_frame`; the workers read their frame lazily from the shared file
system). As tasks finish, the client stores each frame at once (atomic per frame) and, when an input
has all its frames, writes its outputs (:class:`~livepsf.batch.outputs.OutputWriter`).

**Failures.** A worker killed mid-task: Dask reruns the task elsewhere; frames already stored are
never recomputed. Scheduler gone, Ctrl-C, or the client killed: frames stored so far stay, and the
same command run again computes only the rest. A frame that is bad input fails its file (the others
go on); the report says which and why.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livepsf.batch.inputs import expand_inputs, open_source
from livepsf.batch.outputs import BatchOptions, OutputWriter
from livepsf.errors import InputError

__all__ = ["BatchReport", "SourceResult", "connect", "local_cluster", "run_batch"]


@dataclass
class SourceResult:
    """What happened to one input file.

    ``state`` is ``done`` (outputs written now), ``reused`` (an earlier run made them with the same
    settings), ``failed`` (``error`` says why; ``bad_input`` when the file is at fault) or ``unfinished``
    (the run stopped; the frames computed so far are kept for the next run).
    """

    source: Path
    state: str = "pending"
    frames: int = 0
    computed: int = 0
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    bad_input: bool = False


@dataclass
class BatchReport:
    """The outcome of :func:`run_batch`: one :class:`SourceResult` per file, and the throughput."""

    results: list[SourceResult]
    errors: list[str]
    frames_computed: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames_computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.state in ("done", "reused") for r in self.results)


def connect(scheduler: str | None = None, workers: int = 1) -> tuple[Any, Callable[[], None]]:
    """A Dask client: of the cluster at ``scheduler`` (``tcp://host:8786``), or of a new local cluster.

    ``scheduler`` ``None`` or ``"local"`` starts a ``LocalCluster`` of ``workers`` processes with one
    thread each (torch parallelism comes from the processes). Returns the client and a function that
    closes what was opened here (an existing cluster is left running).

    Raises
    ------
    InputError
        Dask is not installed, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler needs Dask: pip install 'livepsf[dask]' (dask.distributed)") from None
    if scheduler in (None, "", "local"):
        if workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        cluster = local_cluster(int(workers))
        client = Client(cluster)

        def close() -> None:
            client.close()
            cluster.close()

        return client, close
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({exc})") from None
    trimmed = [addr for addr, value in client.run(_malloc_trim_threshold).items() if value is not None]
    if trimmed:
        warnings.warn(f"{len(trimmed)} Dask worker(s) run with MALLOC_TRIM_THRESHOLD_ set (Dask's default), which "
                      "makes deconvolution about 3x slower; see livepsf.batch.local_cluster", stacklevel=2)
    return client, client.close


def _malloc_trim_threshold() -> str | None:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def local_cluster(workers: int) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` processes with one thread each, set up for livepsf.

    Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off glibc's
    adaptive mmap threshold: every large torch buffer is then mapped and unmapped afresh, and a 512²
    deconvolution takes 3.5x as long (7.6 s instead of 2.2 s on the reference machine). Workers
    started here keep glibc's default; give your own cluster's workers the same setting
    (``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in a Dask config file).
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address="127.0.0.1:0",  # a free port: never clashes with another cluster
                            silence_logs=logging.CRITICAL)  # task failures are in the report


@dataclass
class _Plan:
    result: SourceResult
    settings: dict[str, Any]
    store: Any
    recorded: list[dict[str, Any] | None]


def run_batch(
    inputs: Iterable[str | Path],
    options: BatchOptions,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int = 1,
    on_frame: Callable[[Path, int], None] | None = None,
    progress: Any = None,
) -> BatchReport:
    """Map, depth-map or deconvolve every frame of ``inputs`` on Dask; resumable.

    Parameters
    ----------
    inputs
        Image files (TIFF/OME-TIFF, PNG, JPEG), OME-Zarr stores and folders of them. They must be
        readable by the workers at the same paths (a shared file system).
    options
        What to do (:class:`~livepsf.batch.outputs.BatchOptions`).
    client
        An existing ``distributed.Client``; else one is made with :func:`connect` from ``scheduler``
        and ``workers`` and closed at the end.
    on_frame
        Called as ``on_frame(source, index)`` after each frame is stored.
    progress
        A ``rich.progress.Progress`` to show frames done, rate and ETA on (optional).

    Returns
    -------
    BatchReport
        Per-file results; outputs of files that failed are not written, and their finished frames are
        kept for a rerun.

    Raises
    ------
    InputError
        Bad options (a missing calibration, an unknown model, ...) or no reachable cluster.
    KeyboardInterrupt
        Ctrl-C: the tasks are cancelled, the frames stored so far kept.
    """
    start = time.perf_counter()
    files, errors = expand_inputs(inputs)
    writer = OutputWriter(options)
    plans = [_plan(writer, path) for path in files]
    todo = [(plan, i) for plan in plans if plan.store is not None for i in plan.store.missing()]
    for plan in plans:  # killed after its last frame, before its outputs were written
        if plan.store is not None and plan.store.complete:
            _finish(writer, plan)
    computed = 0
    if todo:
        owned = None
        if client is None:
            client, owned = connect(scheduler, workers)
        try:
            computed = _run_tasks(client, writer, todo, on_frame, progress)
        finally:
            if owned is not None:
                owned()
    for plan in plans:
        if plan.result.state in ("pending", "running"):
            plan.result.state = "unfinished"
    return BatchReport([p.result for p in plans], errors, computed, time.perf_counter() - start)


def _plan(writer: OutputWriter, path: Path) -> _Plan:
    result = SourceResult(path)
    try:
        source = open_source(path)
        settings = writer.settings(path)
    except InputError as exc:
        result.state, result.error, result.bad_input = "failed", str(exc), True
        return _Plan(result, {}, None, [])
    except OSError as exc:
        result.state, result.error, result.bad_input = "failed", f"{path}: {exc}", True
        return _Plan(result, {}, None, [])
    result.frames = source.n_frames
    finished = writer.find_finished(path, settings)
    if finished is not None:
        result.state, result.outputs = "reused", finished
        stale = writer.store(path, settings, source.n_frames)
        if stale.exists:  # killed after writing the outputs, before removing the store
            stale.discard()
        return _Plan(result, settings, None, [])
    recorded: list[dict[str, Any] | None] = [None] * source.n_frames
    if writer.options.command == "deconvolve":  # a livepsf recording: the maps estimated live
        from livepsf.acquisition.recorder import read_frame_metadata

        records = [f.get("psfmap") for f in read_frame_metadata(path)[1]]
        if len(records) == source.n_frames and all(r is not None for r in records):
            recorded = records
    return _Plan(result, settings, writer.store(path, settings, source.n_frames), recorded)


def _finish(writer: OutputWriter, plan: _Plan) -> None:
    try:
        plan.result.outputs = writer.write(plan.result.source, plan.store, plan.recorded[0] is not None)
        plan.result.state = "done"
    except InputError as exc:
        plan.result.state, plan.result.error, plan.result.bad_input = "failed", str(exc), True


def _run_tasks(client: Any, writer: OutputWriter, todo: list[tuple[_Plan, int]],
               on_frame: Callable[[Path, int], None] | None, progress: Any) -> int:
    from distributed import as_completed

    from livepsf.batch.tasks import compute_frame

    task = writer.task()
    run_id = uuid.uuid4().hex[:8]
    futures = {}
    for plan, i in todo:
        plan.result.state = "running"
        future = client.submit(compute_frame, task, str(plan.result.source), i, plan.recorded[i], pure=False,
                               key=f"livepsf-{task['command']}-{run_id}-{plan.result.source.name}-{i}")
        futures[future] = (plan, i)
    bar = None if progress is None else progress.add_task(f"{task['command']}: frames", total=len(todo), rate="")
    started, done = time.perf_counter(), 0
    try:
        for future in as_completed(list(futures)):
            plan, i = futures.pop(future)
            if plan.result.state != "running":
                continue  # its file already failed
            try:
                out = future.result()
            except InputError as exc:
                _fail(plan, str(exc), True, futures)
                continue
            except Exception as exc:  # a task that keeps killing its workers, a lost scheduler, ...
                if type(exc).__name__ in ("CancelledError", "FutureCancelledError"):
                    break  # the cluster went away: stop; what is stored resumes next time
                _fail(plan, f"{plan.result.source} (frame {i}): {type(exc).__name__}: {exc}", False, futures)
                continue
            plan.store.put(i, out["arrays"], out["meta"])
            plan.result.computed += 1
            done += 1
            if on_frame is not None:
                on_frame(plan.result.source, i)
            if bar is not None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress.update(bar, completed=done, rate=f"{rate:.2f} frames/s")
            if plan.store.complete:
                _finish(writer, plan)
    finally:
        for future in futures:
            future.cancel()
    return done


def _fail(plan: _Plan, reason: str, bad_input: bool, futures: dict) -> None:
    plan.result.state, plan.result.error, plan.result.bad_input = "failed", reason, bad_input
    for future, (other, _) in futures.items():
        if other is plan:
            future.cancel()

