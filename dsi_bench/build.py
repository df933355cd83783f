"""The shard builder: whole shifted test sets as WebDataset shards, resumable and distributed.

The plan is deterministic: shard ``k`` of a shift holds samples ``k*S .. (k+1)*S - 1`` of the
shift's class-major sample list (``S`` = samples per shard). Each shard is written with
webdataset's ``TarWriter`` (fixed mtime, owner and mode, so equal content gives equal bytes)
to a temporary name, hashed, recorded in ``DIR/.build/parts/`` and renamed into place. A
rerun skips every shard whose record, size and sha256 match, and rebuilds anything partial
or damaged. The manifest is written (atomically, with content that depends only on the plan
and the shards) by whichever worker finds all records present, so workers never race on it.

Engines (same bytes from each):

* ``local``: in this process; with several ``devices``, one spawned process per device.
* ``torchrun``: one process per rank (``RANK``/``WORLD_SIZE``, or ``SLURM_PROCID``/
  ``SLURM_NTASKS``); rank ``r`` builds the shards whose global number is ``≡ r (mod world)``.
* ``ray``: one Ray task per shard (``num_gpus`` per task), on a local or remote cluster.

On CPU, float reductions round differently with different thread counts, so the number of
threads is part of the plan (``cpu_threads``); a rerun adopts the recorded value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OptionalDependencyError, ShardError, SpecError
from .files import atomic_write, canonical_json, check_writable, ensure_writable_dir, sha256_file, writing_into
from .layout import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, plan_digest, shard_path, shift_summary
from .version import __version__

__all__ = ["ENGINES", "BuildSummary", "ShardJob", "ShardTask", "SynthesisJob", "build_shards", "run_job"]

logger = logging.getLogger(__name__)

ENGINES = ("local", "torchrun", "ray")
_BUILD_DIR = ".build"
_TAR_MTIME = 0  # fixed tar header fields: equal content -> equal bytes
_TAR_OWNER = "dsi-bench"


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its shift, number, path, and the job-specific items it holds."""

    shift: str
    k: int
    items: tuple

    @property
    def path(self) -> str:
        return shard_path(self.shift, self.k)

    @property
    def part_name(self) -> str:
        return f"{self.shift}-{self.k:06d}.json"


class ShardJob:
    """What to write. Subclasses define the plan, the shard list and the samples of a shard."""

    #: JSON-able dict of everything that determines the shards' bytes.
    plan: dict
    #: What the job does, as its progress bars say it ("build", "convert").
    verb: str = "build"

    @property
    def plan_hash(self) -> str:
        return plan_digest(self.plan)

    def tasks(self) -> list[ShardTask]:
        raise NotImplementedError

    def prepare(self, device: str | None = None) -> None:
        """Per-process set-up before the first shard (load models, pin threads)."""

    def wants_gpu(self) -> bool:
        """Whether Ray tasks should reserve a GPU by default."""
        return False

    def rank_device(self, local_rank: int) -> str | None:
        """The device of a torchrun/SLURM rank when ``devices`` is not given (``None``: as planned)."""
        return None

    def samples(self, task: ShardTask) -> Iterator[dict]:
        """WebDataset sample dicts (``__key__`` plus member name -> bytes), in shard order."""
        raise NotImplementedError


# ---------------------------------------------------------------------- writing one shard
def _parts_dir(out: Path) -> Path:
    return out / _BUILD_DIR / "parts"


def _write_shard(job: ShardJob, out: Path, task: ShardTask, on_sample=None) -> dict:
    from webdataset import TarWriter

    final = out / task.path
    if final.exists() and not _written_by_a_build(out, task):
        raise ShardError(f"{str(final)!r} is not a shard a build of this folder wrote (no record of it in "
                         f"{str(_parts_dir(out))!r} or the manifest); refusing to replace a file it did not write: "
                         "move it away, or choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    n, keys = 0, []
    try:
        with open(tmp, "wb") as f:
            with TarWriter(f, user=_TAR_OWNER, group=_TAR_OWNER, mode=0o444, encoder=False, mtime=_TAR_MTIME) as w:
                for sample in job.samples(task):
                    w.write(sample)
                    keys.append(sample["__key__"])
                    n += 1
                    if on_sample is not None:
                        on_sample(1)
            f.flush()
            os.fsync(f.fileno())
        record = {
            "path": task.path,
            "shift": task.shift,
            "index": task.k,
            "samples": n,
            "first_key": keys[0] if keys else None,
            "last_key": keys[-1] if keys else None,
            "bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        }
        # Record first, then rename: a shard file in place always has its record.
        atomic_write(_parts_dir(out) / task.part_name, canonical_json({"plan_hash": job.plan_hash, **record}))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return record


def _written_by_a_build(out: Path, task: ShardTask) -> bool:
    """Whether the file at the shard's path is one a build wrote (its record, or the manifest, names it)."""
    if (_parts_dir(out) / task.part_name).is_file():
        return True
    try:
        manifest = json.loads((out / MANIFEST).read_bytes())
        return any(isinstance(r, dict) and r.get("path") == task.path for r in manifest.get("shards", []))
    except (OSError, ValueError, AttributeError):
        return False


def _done_record(job: ShardJob, out: Path, task: ShardTask, check_hash: bool = True) -> dict | None:
    """The shard's record when the shard on disk is complete and matches it, else None."""
    part = _parts_dir(out) / task.part_name
    final = out / task.path
    try:
        record = json.loads(part.read_bytes())
        if record.pop("plan_hash") != job.plan_hash or not final.is_file():
            return None
        if final.stat().st_size != record["bytes"]:
            return None
        if check_hash and sha256_file(final) != record["sha256"]:
            return None
        return record
    except (OSError, ValueError, KeyError):
        return None


def _manifest(job: ShardJob, records: list[dict]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "package_version": __version__,
        "plan": job.plan,
        "plan_hash": job.plan_hash,
        "shifts": shift_summary(records),
        "samples": sum(r["samples"] for r in records),
        "shards": records,
    }


def finalize(job: ShardJob, out: str | os.PathLike, tasks: Sequence[ShardTask] | None = None) -> dict | None:
    """Write ``manifest.json`` if every shard has a matching record; return it (else ``None``).

    The content depends only on the plan and the shards, so concurrent callers write the
    same bytes (atomically): no coordination needed.
    """
    out = Path(out)
    records = []
    for task in tasks if tasks is not None else job.tasks():
        record = _done_record(job, out, task, check_hash=False)
        if record is None:
            return None
        records.append(record)
    manifest = _manifest(job, records)
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")
    return manifest


def _check_plan(job: ShardJob, out: Path, overwrite: bool) -> None:
    """Refuse to mix plans in one folder; record this plan for later runs and workers."""
    plan_file = out / _BUILD_DIR / "plan.json"
    old = _recorded_plan(out)
    if old is not None and old != job.plan:
        if not overwrite:
            fields = sorted(k for k in set(old) | set(job.plan) if old.get(k) != job.plan.get(k))
            raise ShardError(
                f"{str(out)!r} holds shards of another plan (differs in: {', '.join(fields)}); "
                "use another output folder, the original settings to resume, or overwrite=True (--overwrite) "
                "to rebuild it from scratch"
            )
        _clear(out)
    atomic_write(plan_file, json.dumps({"plan": job.plan, "plan_hash": job.plan_hash}, indent=1,
                                       sort_keys=True).encode())


def _clear(out: Path) -> None:
    """Remove what earlier builds of this folder wrote (the shards its manifest and records list, their
    temporaries, the manifest and the builder's own folder), and nothing else: a user's files stay."""
    import shutil

    from .files import contained_path

    listed: list[dict] = []
    try:
        listed += json.loads((out / MANIFEST).read_text()).get("shards", [])
    except (OSError, ValueError):
        pass
    for part in _parts_dir(out).glob("*.json"):
        try:
            listed.append(json.loads(part.read_text()))
        except (OSError, ValueError):
            continue
    for record in listed:
        shard = contained_path(out, str(record.get("path", "")), f"shard record in {str(out)!r}")
        shard.unlink(missing_ok=True)
        for tmp in shard.parent.glob(f".{shard.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / _BUILD_DIR, ignore_errors=True)


def _sweep_temporaries(out: Path, tasks: Iterable[ShardTask]) -> None:
    """Remove partial shards of these tasks left by killed workers (live local writers are spared)."""
    names: dict[Path, set[str]] = {}
    for t in tasks:
        names.setdefault(out / t.shift, set()).add(Path(t.path).name)
    for folder, wanted in names.items():
        for tmp in folder.glob(".*.tmp"):
            stem, _, rest = tmp.name[1:].rpartition(".tmp")[0].rpartition(".")
            if stem not in wanted:
                continue
            pid = int(rest) if rest.isdigit() else -1
            if pid == os.getpid() or not _pid_alive(pid):
                tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- running
@dataclass
class BuildSummary:
    """What a build call did: shards/samples built and skipped, and the manifest if complete."""

    out: str
    engine: str
    shards_total: int
    shards_built: int = 0
    shards_skipped: int = 0
    samples_built: int = 0
    seconds: float = 0.0
    manifest: dict | None = field(default=None, repr=False)
    rank: int = 0
    world: int = 1

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    def rows(self) -> list[dict]:
        """Per-shift table rows (shift, samples, shards, bytes) from the manifest."""
        if self.manifest is None:
            return []
        return [{"shift": s, **v} for s, v in self.manifest["shifts"].items()]


def _pending(job: ShardJob, out: Path, tasks: Sequence[ShardTask], summary: BuildSummary) -> list[ShardTask]:
    """The tasks whose shard is not complete on disk; the others are counted as skipped."""
    todo = []
    for task in tasks:
        if _done_record(job, out, task) is not None:
            summary.shards_skipped += 1
        else:
            todo.append(task)
    return todo


def _run_tasks(job: ShardJob, out: Path, tasks: Sequence[ShardTask], progress: bool, desc: str,
               summary: BuildSummary) -> None:
    from tqdm.auto import tqdm

    todo = _pending(job, out, tasks, summary)
    if not todo:
        return
    job.prepare()
    total = sum(len(t.items) for t in todo)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True, smoothing=0.1) as bar:
        for task in todo:
            record = _write_shard(job, out, task, on_sample=bar.update)
            summary.shards_built += 1
            summary.samples_built += record["samples"]


def _torchrun_world():
    from .dist import World

    world = World.launched(slurm=True)
    if world is not None:
        return world
    raise SpecError("engine 'torchrun' needs RANK and WORLD_SIZE (set by torchrun) or SLURM_PROCID and "
                    "SLURM_NTASKS (set by srun); launch with `torchrun --nproc-per-node N -m dsi_bench.cli build ...`")


def _worker_main(job: ShardJob, out: str, rank: int, world: int, device: str | None, progress: bool) -> None:
    job.prepare(device)
    tasks = job.tasks()
    summary = BuildSummary(out, "local", len(tasks))
    _run_tasks(job, Path(out), tasks[rank::world], progress and rank == 0, f"{job.verb}[{rank}]", summary)


def run_job(
    job: ShardJob,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    devices: Sequence[str] | None = None,
    address: str | None = None,
    gpus_per_task: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Write a job's shards into ``out`` with one of :data:`ENGINES`, resuming what exists."""
    import torch

    if engine not in ENGINES:
        raise SpecError(f"unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
    out = ensure_writable_dir(out, "output folder")
    threads = torch.get_num_threads()  # a CPU job pins its plan's thread count; give the caller theirs back
    try:
        with _folder_lock(out, engine), writing_into(out, "output folder", "the shards finished so far are kept: "
                                                      "free some space and rerun the same command to resume"):
            return _run_job(job, out, engine, devices, address, gpus_per_task, overwrite, progress)
    finally:
        torch.set_num_threads(threads)


def _folder_lock(out: Path, engine: str):
    """This run's hold on ``out``: another build or convert of the folder is refused while it lasts.

    The process that runs the job holds it (its ``devices`` workers and Ray tasks write under it);
    under torchrun, rank 0 holds it for the job, as the other ranks only add shards of the same plan.
    """
    from contextlib import nullcontext

    from .locks import folder_lock

    if engine == "torchrun" and not _torchrun_world().main:
        return nullcontext()
    return folder_lock(out, "output folder")


def _run_job(job, out: Path, engine, devices, address, gpus_per_task, overwrite, progress) -> BuildSummary:
    start = time.perf_counter()
    tasks = job.tasks()
    summary = BuildSummary(str(out), engine, len(tasks))
    if engine == "torchrun":
        if overwrite:
            raise SpecError("overwrite is not available with engine 'torchrun' (ranks would race to clear the "
                            "folder); clear it with a local run or choose another output folder")
        w = _torchrun_world()
        rank, world = w.rank, w.world_size
        summary.rank, summary.world = rank, world
        mine = tasks[rank::world]
        _check_plan(job, out, False)  # every rank writes the same plan file: harmless
        job.prepare(_rank_device(devices, w.local_rank) or job.rank_device(w.local_rank))
        _sweep_temporaries(out, mine)
        _run_tasks(job, out, mine, progress and rank == 0, f"{job.verb}[rank {rank}]", summary)
    else:
        _check_plan(job, out, overwrite)
        _sweep_temporaries(out, tasks)
        if engine == "ray":
            _run_ray(job, out, tasks, address, gpus_per_task, progress, summary)
        elif devices and len(devices) > 1:
            _run_processes(job, out, list(devices), progress, summary, tasks)
        else:
            job.prepare(devices[0] if devices else None)
            _run_tasks(job, out, tasks, progress, job.verb, summary)
    summary.manifest = finalize(job, out, tasks)
    summary.seconds = time.perf_counter() - start
    return summary


def _rank_device(devices: Sequence[str] | None, local_rank: int) -> str | None:
    if not devices:
        return None
    return devices[local_rank % len(devices)]


def _run_processes(job, out: Path, devices: list[str], progress: bool, summary: BuildSummary, tasks) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    world = len(devices)
    before = {t.path for t in tasks if _done_record(job, out, t, check_hash=False) is not None}
    procs = [ctx.Process(target=_worker_main, args=(job, str(out), r, world, d, progress), daemon=False)
             for r, d in enumerate(devices)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [f"worker {r} on {devices[r]} (exit code {p.exitcode})" for r, p in enumerate(procs) if p.exitcode]
    after = [t for t in tasks if _done_record(job, out, t, check_hash=False) is not None]
    summary.shards_skipped = len(before)
    summary.shards_built = len(after) - len(before)
    summary.samples_built = sum(len(t.items) for t in after if t.path not in before)
    if failed:
        raise ShardError(f"{', '.join(failed)} failed; rerun the same command to resume the missing shards")


def _run_ray(job, out: Path, tasks, address, gpus_per_task, progress, summary: BuildSummary) -> None:
    try:
        import ray
    except ImportError as cause:
        raise OptionalDependencyError("engine 'ray' needs Ray: pip install 'dsi-bench[ray]'") from cause
    from tqdm.auto import tqdm

    todo = _pending(job, out, tasks, summary)
    if not todo:
        return
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False, configure_logging=False)
    if gpus_per_task is None:
        gpus_per_task = 1.0 if job.wants_gpu() else 0.0
    remote = ray.remote(num_gpus=gpus_per_task, num_cpus=1, max_retries=2)(_ray_build_shard)
    job_ref = ray.put(job)
    pending = {remote.remote(job_ref, str(out), t): t for t in todo}
    with tqdm(total=sum(len(t.items) for t in todo), desc=f"{job.verb}[ray]", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                record = ray.get(ref)
                summary.shards_built += 1
                summary.samples_built += record["samples"]
                bar.update(len(task.items))


def _ray_build_shard(job: ShardJob, out: str, task: ShardTask) -> dict:
    job.prepare(None)
    return _write_shard(job, Path(out), task)


# ---------------------------------------------------------------------- the synthesis job
class SynthesisJob(ShardJob):
    """Generated shifted samples: ``shifts × classes × per_class``, keyed and seeded as synthesis is.

    Build with :func:`build_shards`; picklable (the pipeline is loaded per process).
    """

    def __init__(self, *, shifts, class_indices, per_class, seed, samples_per_shard, image_format, quality,
                 spec, tokens, class_list, cpu_threads, synthesizer, cache_dir=None):
        self.shifts = list(shifts)
        self.class_indices = list(class_indices)
        self.per_class = per_class
        self.seed = seed
        self.samples_per_shard = samples_per_shard
        self.image_format = image_format
        self.quality = quality
        self.spec = spec
        self.tokens = tokens
        self.class_list = class_list
        self.cpu_threads = cpu_threads
        self.cache_dir = cache_dir
        self._synth = synthesizer
        self.plan = self._make_plan()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_synth"] = None
        return state

    def _make_plan(self) -> dict:
        import diffusers
        import PIL
        import torch

        s = self._synth
        return {
            "kind": "synthesis",
            "shifts": [{"id": sh.id, "template": sh.template, "version": sh.version} for sh in self.shifts],
            "classes": self.class_indices,
            "class_names_sha256": hashlib.sha256("\n".join(self.class_list.names).encode()).hexdigest(),
            # a label space other than ImageNet-1k travels with the data (datasets, eval, score, publish read it)
            **({} if self.class_list.is_imagenet else {"class_list": self.class_list.to_dict()}),
            "per_class": self.per_class,
            "seed": self.seed,
            "samples_per_shard": self.samples_per_shard,
            "image_format": self.image_format,
            "quality": self.quality if self.image_format == "jpg" else None,
            "model": self.spec.model,
            "revision": self.spec.revision,
            "model_fingerprint": s.model_fingerprint,
            "tokens": None if self.tokens is None else self.tokens.fingerprint,
            "pixel_settings": {**self.spec.pixel_settings(), "gen_size": s.gen_size},
            "cpu_threads": self.cpu_threads,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "pillow": PIL.__version__},
        }

    def wants_gpu(self) -> bool:
        return self.spec.device_type == "cuda"

    def rank_device(self, local_rank: int) -> str | None:
        # "cuda" without an index means one GPU per rank on each node, as torchrun users expect.
        return f"cuda:{local_rank}" if self.spec.device == "cuda" else None

    def tasks(self) -> list[ShardTask]:
        from .synthesis import make_requests

        out = []
        for shift in self.shifts:
            requests = make_requests(shift, self.class_indices, self.per_class, self.seed)
            for k in range(math.ceil(len(requests) / self.samples_per_shard)):
                chunk = requests[k * self.samples_per_shard : (k + 1) * self.samples_per_shard]
                out.append(ShardTask(shift.id, k, tuple(chunk)))
        return out

    def prepare(self, device: str | None = None) -> None:
        import torch

        from .synthesis import Synthesizer

        if device is not None and device != self.spec.device:
            self.spec = self.spec.replace(device=device)
            self._synth = None
        if self.cpu_threads is not None and self.spec.device_type == "cpu":
            torch.set_num_threads(self.cpu_threads)
        if self._synth is None:
            from .cache import SampleCache

            cache = SampleCache(self.cache_dir) if self.cache_dir is not None else None
            self._synth = Synthesizer(self.spec, self.tokens, self.class_list, cache)

    def samples(self, task: ShardTask) -> Iterator[dict]:
        from .images import encode_image

        b = self.spec.batch_size
        requests = list(task.items)
        for start in range(0, len(requests), b):
            for sample in self._synth.samples(requests[start : start + b]):
                meta = dict(sample.metadata)
                meta["image_format"] = self.image_format
                meta["quality"] = self.quality if self.image_format == "jpg" else None
                yield {
                    "__key__": sample.request.key,
                    self.image_format: encode_image(sample.image, self.image_format, self.quality),
                    "cls": str(sample.request.class_index).encode(),
                    "json": canonical_json(meta),
                }


def _recorded_plan(out: Path) -> dict | None:
    """The plan an earlier run recorded in ``out`` (its plan file, else its manifest), if any."""
    for path in (out / _BUILD_DIR / "plan.json", out / MANIFEST):
        try:
            plan = json.loads(path.read_bytes())["plan"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(plan, dict):
            return plan
    return None


def _recorded_threads(out: Path) -> int | None:
    plan = _recorded_plan(out)
    return None if plan is None else plan.get("cpu_threads")


def build_shards(
    out: str | os.PathLike,
    *,
    shifts: Iterable = ("base",),
    classes: str | Sequence[int] | None = None,
    per_class: int = 50,
    seed: int = 0,
    samples_per_shard: int = 1000,
    image_format: str = "jpg",
    quality: int = 95,
    pipeline=None,
    tokens="imagenet-star",
    class_list=None,
    engine: str = "local",
    devices: Sequence[str] | None = None,
    address: str | None = None,
    gpus_per_task: float | None = None,
    cpu_threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **deprecated_names,
) -> BuildSummary:
    """Generate shifted test sets as WebDataset shards with a checksummed manifest.

    Args:
        out: output folder (``out/manifest.json``, ``out/{shift}/{shift}-{k:06d}.tar``).
        shifts, classes, per_class, seed, pipeline, tokens, class_list: as in
            :func:`~dsi_bench.folders.generate_folder`.
        samples_per_shard: samples per tar (the unit of resumption and of work distribution).
        image_format: ``"jpg"`` (quality recorded) or ``"png"`` (lossless: pixel-identical to synthesis).
        engine: ``"local"``, ``"torchrun"`` or ``"ray"`` (see the module docs).
        devices: for ``local``, one worker process per device (``["cuda:0", "cuda:1"]``); for
            ``torchrun``, devices indexed by ``LOCAL_RANK``. Default: ``spec.device``.
        address: Ray cluster address (default: start or join a local one).
        gpus_per_task: Ray ``num_gpus`` per shard task (default 1 on CUDA, else 0).
        cpu_threads: torch threads on CPU, part of the plan (default: the value recorded by an
            earlier run of this folder, else this process's).
        cache_dir: serve samples already in this sample cache (e.g. from ``generate``) instead of
            generating them again; off by default, because on CPU a cached sample may have been
            made with another thread count than the plan's (its last bits can differ).
        overwrite: rebuild a folder that holds another plan instead of refusing.
        progress: show a progress bar (samples/s, ETA).

    Returns:
        A :class:`BuildSummary`; ``summary.manifest`` is set once every shard exists.

    Raises:
        SpecError, ShiftError, ClassSpecError, TokenBankError: bad arguments, before any work.
        ShardError: ``out`` holds another plan (without ``overwrite``), or a worker failed.
    """
    import torch

    from .compat import reject_unknown, renamed
    from .devices import resolve_device
    from .images import check_image_options
    from .pipeline import PipelineSpec, check_model
    from .shifts import get_shift
    from .synthesis import Synthesizer
    from .tokens import token_classes, tokens_class_list
    from .validate import check_finite_float, check_positive_int, check_sample_counts

    spec = renamed(deprecated_names, "spec", "pipeline", pipeline, where="build_shards: ") or PipelineSpec()
    reject_unknown(deprecated_names, "build_shards")
    check_image_options(image_format, quality)
    check_positive_int(samples_per_shard, "samples_per_shard", example=1000)
    check_positive_int(cpu_threads, "cpu_threads", optional=cpu_threads is None)
    check_finite_float(gpus_per_task, "gpus_per_task", low=0, example=1, optional=True)
    check_model(spec.model)
    if engine != "ray":  # this machine's devices, before the output folder exists (Ray workers have their own)
        for device in devices or [spec.device]:
            resolve_device(device, check=True)
    class_list = tokens_class_list(tokens, class_list)
    indices = token_classes(tokens, class_list, classes, spec.model)
    shift_objs = [get_shift(s) for s in shifts]
    if len({s.id for s in shift_objs}) != len(shift_objs):
        raise SpecError(f"shifts {[s.id for s in shift_objs]} name the same shift twice")
    check_sample_counts(per_class, len(indices), len(shift_objs))
    check_writable(out, "output folder", folder=True)
    synth = Synthesizer.open(spec, tokens, class_list, indices, cache_dir=cache_dir if cache_dir else False)
    if spec.device_type == "cpu" and cpu_threads is None:
        cpu_threads = _recorded_threads(Path(out)) or torch.get_num_threads()
    job = SynthesisJob(
        shifts=shift_objs, class_indices=indices, per_class=per_class, seed=seed,
        samples_per_shard=samples_per_shard, image_format=image_format, quality=quality, spec=spec,
        tokens=synth.tokens, class_list=class_list, cpu_threads=cpu_threads if spec.device_type == "cpu" else None,
        synthesizer=synth, cache_dir=str(synth.cache.root) if synth.cache is not None else None,
    )
    return run_job(job, out, engine=engine, devices=devices, address=address, gpus_per_task=gpus_per_task,
                   overwrite=overwrite, progress=progress)

