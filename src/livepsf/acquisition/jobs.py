"""Background deconvolution of saved images in worker *processes*, with an on-disk journal.

:class:`DeconvolutionQueue` runs each job — one image file, every frame of it — in a worker process
started with ``multiprocessing`` *spawn*, so the live loop never waits for deconvolution and a crash
in a job cannot take the acquisition down. Jobs come from :meth:`DeconvolutionQueue.submit`, called by
``livepsf deconvolve`` or by a :class:`~livepsf.acquisition.recorder.Recorder` when a recording
closes (``Recorder(..., on_close=queue.submit)``).

**PSF maps.** A recording made with PSF maps (its ``_frames.jsonl`` sidecar) is deconvolved with the
maps the CNN estimated live for each frame; any other image is mapped in the worker with
``PSFMapper(load_model(model), stride_px, dihedral_average=...)``.

**Output.** ``<name>_deconv.ome.tif`` beside the input (or in ``out_dir``), never overwriting
(:func:`livepsf.imageio.output_path`): float32 ``(T,) Y X``, and the parameters used (iterations, TV
weight, PSF source, model, per-frame PSF grid, and the run's *settings*: input identity and options) as
JSON in the OME ``Description``. The worker writes a temporary file and renames it onto the reserved
name when complete, so an output that exists is whole. The input is only ever read.

**Resume without duplicates.** Each finished frame is kept in a :class:`~livepsf.framestore.FrameStore`
until the output is written, so a job interrupted mid-file redoes only its missing frames.
:meth:`DeconvolutionQueue.submit` of an input whose complete output with the *same settings* already
exists returns a job that is done at once with that output (``reused``); of an input already queued
unfinished with the same settings, that job's id. Other settings always give a new output name.

**Workers die with their owner.** Each worker holds the read end of a pipe whose only write end stays
in the queue's process; a watchdog thread in the worker exits the process when that pipe closes,
which the kernel does whenever the owner dies (SIGKILL included). No orphan goes on writing outputs.

**Journal.** One JSON object per line, appended and fsync-ed by the queue's owner process only:
``submitted`` (the job's parameters), ``started`` (attempt number, reserved output), ``done`` (output),
``failed`` (reason), ``crashed`` (the worker died). The state of every job is the fold of its events.
A new queue on the same journal resumes every job that is neither done nor failed: after a crash of
the worker (detected at once; the job is retried up to ``max_attempts`` times), or of the whole
program. A failed job records why and the queue moves on.

**Progress.** ``progress(job_id, done, total)`` (steps = frames x iterations), ``finished(JobState)``
and ``failed(JobState)`` are psygnal signals emitted from the queue's dispatcher thread (connect GUI
slots with ``thread="main"``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from psygnal import Signal

from livepsf.deconv import DEFAULT_ACCELERATE, DEFAULT_ITERATIONS, DEFAULT_TV_WEIGHT

__all__ = [
    "DeconvolutionQueue",
    "JobState",
    "deconv_params",
    "deconv_settings",
    "deconvolve_frame",
    "default_journal_path",
    "find_finished_output",
    "output_settings",
    "run_job",
    "write_deconv_output",
]

_OUTPUT_SUFFIX = "_deconv.ome.tif"


def default_journal_path() -> Path:
    """``$XDG_CACHE_HOME/livepsf/deconv_journal.jsonl`` (``~/.cache/...`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "livepsf" / "deconv_journal.jsonl"


@dataclass
class JobState:
    """One job and where it stands (the fold of its journal events)."""

    id: str
    input: str
    iterations: int = DEFAULT_ITERATIONS
    tv_weight: float = DEFAULT_TV_WEIGHT
    out_dir: str | None = None
    model: str = "default"
    stride_px: int = 64
    dihedral_average: bool = False  # absent from older journals' jobs: plain maps
    state: str = "pending"  # pending | running | done | failed
    attempts: int = 0
    output: str | None = None
    error: str | None = None
    bad_input: bool = False  # the failure was the input's fault (unreadable file, ...), not a bug
    reused: bool = False  # done at submission: a complete output with the same settings existed
    submitted_utc: str = ""
    finished_utc: str | None = None
    history: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def spec(self) -> dict[str, Any]:
        """What a worker needs to run the job."""
        return {k: getattr(self, k) for k in ("id", "input", "iterations", "tv_weight", "out_dir", "model",
                                              "stride_px", "dihedral_average", "output")}


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Journal:
    """Append-only JSON-lines event log; one writer (the queue's process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def replay(self) -> dict[str, JobState]:
        jobs: dict[str, JobState] = {}
        if not self.path.is_file():
            return jobs
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            _apply(jobs, ev)
        return jobs


def _apply(jobs: dict[str, JobState], ev: dict[str, Any]) -> None:
    kind = ev.get("event")
    if kind == "submitted":
        job = JobState(**ev["job"])
        jobs[job.id] = job
        return
    job = jobs.get(ev.get("id", ""))
    if job is None:
        return
    job.history.append(kind)
    if kind == "started":
        job.state, job.attempts, job.output = "running", ev["attempt"], ev.get("output")
    elif kind == "done":
        job.state, job.output, job.error, job.finished_utc = "done", ev["output"], None, ev.get("utc")
        job.reused = bool(ev.get("reused", False))
    elif kind == "failed":
        job.state, job.error, job.finished_utc = "failed", ev["reason"], ev.get("utc")
        job.bad_input = bool(ev.get("bad_input", False))
    elif kind == "crashed":
        job.state, job.error = "pending", ev["reason"]


class DeconvolutionQueue:
    """A queue of deconvolution jobs run by background worker processes, resumable from its journal.

    Parameters
    ----------
    journal
        Journal file; :func:`default_journal_path` when omitted. Unfinished jobs in it are resumed.
    workers
        Number of worker processes (each deconvolves one file at a time).
    device
        Torch device for the workers (``None``: CUDA when available).
    torch_threads
        CPU threads per worker (``None``: the machine's cores shared among the workers, at least one;
        torch's own default gives every worker all cores, and two workers on two cores then ran a
        deconvolution ten times slower than one thread each).
    max_attempts
        Runs of a job whose worker crashed before it is marked failed.
    start
        Start the workers now (else call :meth:`start`).
    """

    progress = Signal(str, int, int)
    finished = Signal(object)
    failed = Signal(object)

    def __init__(
        self,
        journal: str | Path | None = None,
        *,
        workers: int = 1,
        device: str | None = None,
        torch_threads: int | None = None,
        max_attempts: int = 2,
        start: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._journal = _Journal(Path(journal) if journal is not None else default_journal_path())
        self.journal_path = self._journal.path
        self.n_workers = int(workers)
        self.device = device
        self.torch_threads = (torch_threads if torch_threads is not None
                              else max(1, (os.cpu_count() or 1) // self.n_workers))
        self.max_attempts = int(max_attempts)
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._jobs = self._journal.replay()
        self._pending: list[str] = []
        for job in self._jobs.values():
            if not job.finished:
                job.state = "pending"
                self._pending.append(job.id)
        self.resumed = list(self._pending)
        self._workers: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # -- public API -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker processes and the dispatcher thread (no-op when running)."""
        with self._lock:
            if self._thread is not None:
                return
            for _ in range(self.n_workers):
                self._workers.append(self._spawn())
            self._thread = threading.Thread(target=self._dispatch_loop, name="livepsf-deconv-queue", daemon=True)
            self._thread.start()

    def submit(
        self,
        path: str | Path,
        *,
        iterations: int = DEFAULT_ITERATIONS,
        tv_weight: float = DEFAULT_TV_WEIGHT,
        out_dir: str | Path | None = None,
        model: str = "default",
        stride_px: int = 64,
        dihedral_average: bool = False,
    ) -> str:
        """Queue one image file; returns the job id. The job is in the journal before this returns.

        ``model``, ``stride_px`` and ``dihedral_average`` make the PSF maps of images without recorded
        maps (:class:`~livepsf.mapping.PSFMapper`).

        The same input with the same settings is not done twice: when this queue already holds it
        unfinished, that job's id is returned; when a complete output made with these settings exists,
        the new job is done at once with that output (:attr:`JobState.reused`).
        """
        job = JobState(id=uuid.uuid4().hex[:12], input=str(Path(path).resolve()), iterations=int(iterations),
                       tv_weight=float(tv_weight), out_dir=None if out_dir is None else str(Path(out_dir).resolve()),
                       model=str(model), stride_px=int(stride_px), dihedral_average=bool(dihedral_average),
                       submitted_utc=_utc())
        record = asdict(job)
        for transient in ("state", "attempts", "output", "error", "bad_input", "reused", "finished_utc", "history"):
            record.pop(transient)
        settings = _job_settings(job)
        with self._lock:
            if settings is not None:
                for other in self._jobs.values():
                    if not other.finished and other.out_dir == job.out_dir and _job_settings(other) == settings:
                        return other.id
            finished = None if settings is None else find_finished_output(job.input, job.out_dir, settings)
            self._log({"event": "submitted", "job": record, "utc": job.submitted_utc})
            if finished is not None:
                self._log({"event": "done", "id": job.id, "output": str(finished), "reused": True, "utc": _utc()})
                self.finished.emit(JobState(**asdict(self._jobs[job.id])))
            else:
                self._pending.append(job.id)
        return job.id

    def jobs(self) -> list[JobState]:
        """Every job of the journal, in submission order."""
        with self._lock:
            return [JobState(**asdict(j)) for j in self._jobs.values()]

    def job(self, job_id: str) -> JobState:
        with self._lock:
            return JobState(**asdict(self._jobs[job_id]))

    @property
    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w["process"].pid for w in self._workers]

    def running_job_ids(self) -> list[str]:
        with self._lock:
            return [w["job"] for w in self._workers if w["job"] is not None]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every job is done or failed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while any(not j.finished for j in self._jobs.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.2 if remaining is None else min(0.2, remaining))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (a running job is left unfinished in the journal and resumes next time)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for w in self._workers:
                try:
                    w["conn"].send(None)
                except (OSError, ValueError):
                    pass
            for w in self._workers:
                w["process"].join(timeout=2.0)
                if w["process"].is_alive():
                    w["process"].kill()
                    w["process"].join(timeout=2.0)
                w["conn"].close()
                w["alive"].close()
            self._workers.clear()
            self._thread = None

    def __enter__(self) -> DeconvolutionQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- dispatcher -----------------------------------------------------------------------------

    def _spawn(self) -> dict[str, Any]:
        parent, child = self._ctx.Pipe()
        # Only this process holds alive_writer: the kernel closes it when we die, however we die.
        alive_reader, alive_writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_worker_main, args=(child, alive_reader, self.device, self.torch_threads),
                                    name="livepsf-deconv-worker", daemon=True)
        process.start()
        child.close()
        alive_reader.close()
        return {"process": process, "conn": parent, "alive": alive_writer, "job": None}

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                self._reap_dead_workers()
                self._assign_jobs()
                conns = [w["conn"] for w in self._workers]
            ready = wait(conns, timeout=0.2) if conns else []
            for conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    continue  # the worker died; reaped on the next pass
                self._handle(conn, message)

    def _assign_jobs(self) -> None:
        from livepsf.imageio import output_path

        for w in self._workers:
            if w["job"] is not None or not self._pending or not w["process"].is_alive():
                continue
            job = self._jobs[self._pending.pop(0)]
            if job.output and _is_complete_output(Path(job.output)):
                # Finished before a crash of this process, but never journalled as done.
                self._record_done(job, job.output)
                continue
            if not job.output or not Path(job.output).exists():
                try:
                    reserved = output_path(job.input, _OUTPUT_SUFFIX, job.out_dir)
                    reserved.touch(exist_ok=False)  # reservation: the worker renames the result onto it
                except OSError as exc:
                    self._record_failed(job, f"cannot create the output beside {job.input}: {exc}", bad_input=True)
                    continue
                job.output = str(reserved)
            self._log({"event": "started", "id": job.id, "attempt": job.attempts + 1,
                       "output": job.output, "pid": w["process"].pid, "utc": _utc()})
            w["job"] = job.id
            w["conn"].send(job.spec())

    def _reap_dead_workers(self) -> None:
        for i, w in enumerate(self._workers):
            if w["process"].is_alive():
                continue
            code = w["process"].exitcode
            job_id = w["job"]
            w["conn"].close()
            w["alive"].close()
            if job_id is not None:
                job = self._jobs[job_id]
                reason = f"worker process died (exit code {code}) during attempt {job.attempts}"
                if job.attempts >= self.max_attempts:
                    self._record_failed(job, reason)
                else:
                    self._log({"event": "crashed", "id": job.id, "reason": reason, "utc": _utc()})
                    self._pending.insert(0, job.id)
            if not self._stopping.is_set():
                self._workers[i] = self._spawn()

    def _handle(self, conn: Connection, message: tuple) -> None:
        kind, job_id = message[0], message[1]
        with self._lock:
            job = self._jobs.get(job_id)
            worker = next((w for w in self._workers if w["conn"] is conn), None)
            if job is None:
                return
            if kind == "progress":
                done, total = message[2], message[3]
            elif kind == "done":
                if worker is not None:
                    worker["job"] = None
                self._record_done(job, message[2])
            elif kind == "failed":
                if worker is not None:
                    worker["job"] = None
                self._record_failed(job, message[2], bad_input=bool(message[3]))
        if kind == "progress":
            self.progress.emit(job_id, done, total)

    def _log(self, event: dict[str, Any]) -> None:
        """Journal an event, then apply it to the in-memory state (the same fold as a replay)."""
        self._journal.append(event)
        _apply(self._jobs, event)

    def _record_done(self, job: JobState, output: str) -> None:
        self._log({"event": "done", "id": job.id, "output": output, "utc": _utc()})
        self._idle.notify_all()
        self.finished.emit(JobState(**asdict(job)))

    def _record_failed(self, job: JobState, reason: str, bad_input: bool = False) -> None:
        if job.output and Path(job.output).is_file() and Path(job.output).stat().st_size == 0:
            Path(job.output).unlink()  # release the empty reservation
        self._log({"event": "failed", "id": job.id, "reason": reason, "bad_input": bad_input, "utc": _utc()})
        self._idle.notify_all()
        self.failed.emit(JobState(**asdict(job)))


def _is_complete_output(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _job_settings(job: JobState) -> dict[str, Any] | None:
    """The settings a job's output records, or ``None`` when its input cannot be looked at."""
    try:
        return deconv_settings(job.input, iterations=job.iterations, tv_weight=job.tv_weight, model=job.model,
                               stride_px=job.stride_px, dihedral_average=job.dihedral_average)
    except OSError:
        return None  # a missing input: the job fails in the worker with a clear message


# -- settings and outputs (shared with livepsf.batch) ----------------------------------------------


def deconv_settings(source: str | Path, *, iterations: int, tv_weight: float, model: str,
                    stride_px: int, dihedral_average: bool = False) -> dict[str, Any]:
    """Everything that decides a deconvolution output: the input's identity and the options.

    Two runs with equal settings make the same output, so a finished one can be reused.

    Raises
    ------
    OSError
        The input cannot be looked at (missing).
    """
    from livepsf.framestore import source_identity

    settings = {"command": "deconvolve", **source_identity(source), "iterations": int(iterations),
                "tv_weight": float(tv_weight), "acceleration": "Biggs-Andrews" if DEFAULT_ACCELERATE else None,
                "model": str(model), "stride_px": int(stride_px)}
    if dihedral_average:  # absent for plain maps: earlier outputs stay recognised
        settings["dihedral_average"] = True
    return settings


def output_settings(path: str | Path) -> dict[str, Any] | None:
    """The settings recorded in a deconvolution output, or ``None`` (not one, older, or unreadable)."""
    import xml.etree.ElementTree as ET

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
        root = ET.fromstring(xml or "")
    except Exception:  # not a TIFF, a truncated file, no OME-XML: not a finished output of ours
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Description" and element.text:
            try:
                params = json.loads(element.text)
            except json.JSONDecodeError:
                return None
            settings = params.get("settings") if isinstance(params, dict) else None
            return settings if isinstance(settings, dict) else None
    return None


def find_finished_output(source: str | Path, out_dir: str | Path | None,
                         settings: dict[str, Any]) -> Path | None:
    """A complete ``<name>_deconv*.ome.tif`` of ``source`` made with ``settings``, or ``None``."""
    from livepsf.imageio import existing_outputs

    for path in existing_outputs(source, _OUTPUT_SUFFIX, out_dir):
        if _is_complete_output(path) and output_settings(path) == settings:
            return path
    return None


def deconvolve_frame(frame: Any, pmap: Any, *, iterations: int, tv_weight: float, device: str | None = None,
                     progress: Any = None) -> tuple[Any, dict[str, Any]]:
    """Deconvolve one frame with its PSF map; returns the float32 image and the map's grid record."""
    from livepsf.deconv import deconvolve

    image = deconvolve(frame, pmap, iterations=int(iterations), tv_weight=float(tv_weight),
                       accelerate=DEFAULT_ACCELERATE, device=device, progress=progress)
    grid = {"psf_model": pmap.psf_model, "model_name": pmap.model_name, "grid": list(pmap.grid_shape),
            "window_px": pmap.window_px, "stride_px": pmap.stride_px}
    return image, grid


def deconv_params(settings: dict[str, Any], recorded_maps: bool, grids: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON recorded in an output's OME ``Description``."""
    return {
        "software": "livepsf deconvolve", "source": settings["source"], "iterations": settings["iterations"],
        "tv_weight": settings["tv_weight"], "acceleration": settings["acceleration"],
        "psf_source": "recorded PSF maps" if recorded_maps else "CNN",
        "model": None if recorded_maps else settings["model"],
        "stride_px": None if recorded_maps else settings["stride_px"],
        "dihedral_average": None if recorded_maps else settings.get("dihedral_average", False),
        "frames": grids, "settings": settings,
    }


def write_deconv_output(final: Path, planes: Sequence[Any], params: dict[str, Any], pixel_size_um: float) -> Path:
    """Write the deconvolved planes to ``final`` through a temporary name: it appears whole or not at all.

    ``planes`` is indexed one plane at a time while writing (a lazy sequence keeps memory to one
    frame); files over 2 GiB are written as BigTIFF.
    """
    import numpy as np
    import tifffile

    first = np.asarray(planes[0], dtype=np.float32)
    shape = (len(planes), *first.shape) if len(planes) > 1 else first.shape
    data = (np.asarray(planes[i], dtype=np.float32) for i in range(len(planes))) if len(planes) > 1 else first
    partial = final.with_name(f".{final.name}.partial")  # final is reserved for this output alone
    try:
        tifffile.imwrite(partial, data, shape=shape, dtype=np.float32, ome=True, photometric="minisblack",
                         bigtiff=first.nbytes * len(planes) > 2**31,
                         resolution=(1.0 / pixel_size_um, 1.0 / pixel_size_um), resolutionunit="MICROMETER",
                         metadata={"axes": "TYX" if len(shape) == 3 else "YX", "PhysicalSizeX": pixel_size_um,
                                   "PhysicalSizeY": pixel_size_um, "Description": json.dumps(params)})
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, final)  # onto our own reservation (or a new name)
    finally:
        if partial.exists():
            partial.unlink()
    return final


# -- worker side -----------------------------------------------------------------------------------


def _exit_with_parent(alive: Connection) -> None:
    """Exit this process as soon as ``alive``'s other end closes (its owner died)."""

    def watch() -> None:
        try:
            alive.recv()  # the owner never sends: this returns only by EOF
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="livepsf-parent-watch", daemon=True).start()


def _worker_main(conn: Connection, alive: Connection, device: str | None, torch_threads: int | None) -> None:
    """Worker process: run jobs sent on ``conn`` until ``None`` arrives or the pipe closes."""
    _exit_with_parent(alive)
    import torch

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    models: dict[tuple[str, int, bool], Any] = {}
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        job_id = spec["id"]

        def report(done: int, total: int, job_id: str = job_id) -> None:
            conn.send(("progress", job_id, done, total))

        try:
            output = run_job(spec, device=device, progress=report, mappers=models)
            conn.send(("done", job_id, str(output)))
        except Exception as exc:  # the reason goes to the journal; the worker carries on
            from livepsf.errors import InputError

            bad_input = isinstance(exc, InputError)
            reason = str(exc) if bad_input else \
                f"unexpected {type(exc).__name__}: {exc} ({traceback.format_exc(limit=3).splitlines()[-1]})"
            conn.send(("failed", job_id, reason, bad_input))


def run_job(
    spec: dict[str, Any],
    *,
    device: str | None = None,
    progress: Any = None,
    mappers: dict | None = None,
) -> Path:
    """Deconvolve every frame of ``spec["input"]`` into ``spec["output"]`` (the reserved name).

    Runs in the worker; usable in-process too (tests, scripts). Finished frames are kept in a
    :class:`~livepsf.framestore.FrameStore` until the output is written, so a rerun after a crash does
    only the missing ones. Returns the output path.
    """
    from livepsf.acquisition.recorder import read_frame_metadata, recorded_psfmaps
    from livepsf.errors import InputError
    from livepsf.framestore import FrameStore
    from livepsf.imageio import output_path, read_frames

    source = Path(spec["input"])
    frames = read_frames(source)
    header, _ = read_frame_metadata(source)
    maps = recorded_psfmaps(source)
    use_recorded = len(maps) == len(frames) and all(m is not None for m in maps)
    settings = deconv_settings(source, iterations=spec["iterations"], tv_weight=spec["tv_weight"],
                               model=spec["model"], stride_px=spec["stride_px"],
                               dihedral_average=bool(spec.get("dihedral_average", False)))
    final = Path(spec["output"]) if spec.get("output") else output_path(source, _OUTPUT_SUFFIX, spec.get("out_dir"))
    store = FrameStore.for_output(source, _OUTPUT_SUFFIX, final.parent, settings, len(frames))
    mapper = None if use_recorded else _cached_mapper(spec["model"], int(spec["stride_px"]),
                                                      bool(spec.get("dihedral_average", False)), mappers)
    steps = max(int(spec["iterations"]), 1)
    total = len(frames) * steps
    for count, i in enumerate(store.missing(), start=len(store.done())):
        try:
            pmap = maps[i] if use_recorded else mapper(frames[i])
        except InputError as exc:
            raise InputError(f"{source} (frame {i}): {exc}") from None

        def step(it: int, n: int, count: int = count) -> None:
            if progress is not None:
                progress(count * steps + it, total)

        image, grid = deconvolve_frame(frames[i], pmap, iterations=spec["iterations"], tv_weight=spec["tv_weight"],
                                       device=device, progress=step)
        store.put(i, {"image": image}, {"grid": grid, "pixel_size_um": pmap.optics.pixel_size_um})
    metas = [store.meta(i) for i in range(len(frames))]
    pixel_size_um = header.get("pixel_size_um") or metas[-1]["pixel_size_um"]
    write_deconv_output(final, store.planes("image"), deconv_params(settings, use_recorded, [m["grid"] for m in metas]),
                        pixel_size_um)
    store.discard()
    return final


def _cached_mapper(model: str, stride_px: int, dihedral_average: bool, mappers: dict | None) -> Any:
    """A PSFMapper for (model, stride, averaging), kept in ``mappers`` (per worker process) when given."""
    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model

    key = (model, int(stride_px), bool(dihedral_average))
    if mappers is not None and key in mappers:
        return mappers[key]
    mapper = PSFMapper(load_model(model), stride_px=int(stride_px), dihedral_average=bool(dihedral_average))
    if mappers is not None:
        mappers[key] = mapper
    return mapper
