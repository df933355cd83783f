"""The benchmark harness: any classifier, every shift of a source, one streaming pass per shift.

``evaluate(classifier, data={"source": "shards", "root": ...})`` loads the classifier (see
:mod:`dsi_bench.models`), streams each shift through a ``DataLoader`` (workers decode ahead,
pinned memory and non-blocking copies on CUDA, optional AMP and ``channels_last``), keeps only
each sample's top-5 labels (a few bytes per sample), checks that every selected sample was seen
exactly once, and computes the metrics of :mod:`dsi_bench.results`.

Under ``torchrun`` (``WORLD_SIZE > 1``) each rank streams its own shards; the per-sample
predictions are gathered and every rank computes the same results, equal to one process's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import CacheError, DsiBenchError, SpecError
from .models import ClassMap, LoadedModel, load_model
from .results import Results, ShiftPredictions, build_results, write_predictions

__all__ = ["data_arguments", "data_info", "evaluate", "hardware_info", "resolve_shifts", "write_predictions"]

logger = logging.getLogger(__name__)


def resolve_shifts(shifts, source: str | None, root) -> list[str]:
    """Shift ids to evaluate: ``"all"`` (what the source holds), a comma list, or a sequence; base first.

    Ids the source holds (custom ones included) are taken as they are; other names go through
    :func:`~dsi_bench.shifts.get_shift`.

    Raises:
        SpecError: unknown source, or a source that needs a root without one.
        DsiBenchError: nothing to evaluate.
    """
    from .shifts import get_shift
    from .sources import source_class

    available: list[str] = []
    if source is not None:  # None: names only (scoring a file without its data)
        cls = source_class(source)
        if cls.root_help is not None and root is None:
            raise SpecError(f"source {source!r} needs root= (--root): {cls.root_help}")
        available = cls.available_shifts(root)
    if shifts is None or shifts == "all":
        ids = list(available)
    else:
        names = [s.strip() for s in shifts.split(",")] if isinstance(shifts, str) else list(shifts)
        ids = [s if s in available else get_shift(s).id for s in names if s]
    if not ids:
        raise DsiBenchError(f"source {source!r} at {root!r} holds no shifts to evaluate")
    ids = list(dict.fromkeys(ids))
    return (["base"] if "base" in ids else []) + [s for s in ids if s != "base"]


def hardware_info(device: str) -> dict:
    """Device, CPU model and count, torch and Python versions, and the GPU's name on CUDA."""
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _masks_id(masks) -> str | None:
    if masks is None or masks is False:
        return None
    if masks is True:
        return "release masks"
    from .masks import Masks

    if isinstance(masks, Masks):
        return masks.source or "in-memory masks"
    from .files import sha256_file

    path = os.fspath(masks)
    return f"{os.path.basename(path)}:sha256:{sha256_file(path)}" if os.path.isfile(path) else path


def data_info(source: str, root, masks, classes, fingerprints: dict[str, str], manifest: str | None, *,
              backend_masks=None) -> dict:
    """The ``data`` section of a results file: source, masks and fingerprints (shared by eval and score).

    ``backend_masks`` is the mask policy the source applied (``FLAGS`` names the recorded keep flags).
    """
    from .sources.base import FLAGS

    masks_id = FLAGS.source if (masks is True and backend_masks is FLAGS) else _masks_id(masks)
    fp = hashlib.sha256()
    for s in sorted(fingerprints):
        fp.update(f"{s}:{fingerprints[s]}\n".encode())
    base = f"manifest:{manifest}" if manifest else fp.hexdigest()
    return {
        "source": source,
        "root": None if root is None else str(root),
        "fingerprint": base + (f"|masks:{masks_id}" if masks_id else ""),
        "masks": masks_id,
        "classes": None if classes is None else str(classes),
        "shift_fingerprints": dict(fingerprints),
    }


class _Predictor:
    """logits -> (top-k label-space indices, top-1 probability), through an optional class map and class
    restriction (the probability is the softmax over the outputs the model may predict)."""

    def __init__(self, num_classes: int, class_map: ClassMap | None, allowed: Sequence[int] | None, k: int = 5):
        import torch

        self.num_classes = num_classes
        self.class_map = class_map
        self.k = k
        self.targets = None if class_map is None else torch.tensor(class_map.targets)
        self.allowed = None if allowed is None else set(int(c) for c in allowed)
        self._mask = None

    def _column_mask(self, outputs: int, device):
        import torch

        if self._mask is None or self._mask.numel() != outputs:
            targets = self.targets if self.targets is not None else torch.arange(outputs)
            keep = targets >= 0
            if self.allowed is not None:
                keep &= torch.tensor([int(t) in self.allowed for t in targets.tolist()])
            self._mask = (~keep).to(device)
        return self._mask

    def __call__(self, logits):
        import torch

        outputs = logits.shape[1]
        if self.class_map is None and outputs != self.num_classes:
            raise SpecError(f"the model has {outputs} outputs but the label space has {self.num_classes} classes; "
                            "pass a class map (class_map=, --class-map FILE) saying which class each output is")
        if self.class_map is not None and outputs != len(self.class_map):
            raise SpecError(f"the class map {self.class_map.source!r} lists {len(self.class_map)} outputs but the "
                            f"model has {outputs}")
        logits = logits.float()
        mask = self._column_mask(outputs, logits.device)
        if bool(mask.any()):
            logits = logits.masked_fill(mask, float("-inf"))
        k = min(self.k, outputs)
        best = logits.topk(k, dim=1)
        confidence = (best.values[:, 0] - logits.logsumexp(dim=1)).exp().cpu()
        idx = best.indices.cpu()
        if self.targets is not None:
            idx = self.targets[idx]
        if k < self.k:
            idx = torch.cat([idx, torch.full((idx.shape[0], self.k - k), -1, dtype=idx.dtype)], dim=1)
        return idx, confidence


#: Dataset arguments recorded in ``results["run"]["dataset"]`` even when left at their defaults.
_RECORDED_DEFAULTS = ("source", "root", "classes", "per_class", "masks", "fast_decode")


def data_arguments(data, legacy_positional: tuple, legacy: dict, where: str) -> dict:
    """``ShiftedImageNet`` arguments from ``data=`` and the pre-0.2 ways of passing them.

    Old calls passed the data as keywords (``source=``, ``root=``, ``classes=``, ...) and
    ``source``/``root`` positionally; they still work, with a ``DeprecationWarning``.

    Raises:
        TypeError: too many positional arguments, or the same argument given twice.
        SpecError: a key that is not a ``ShiftedImageNet`` argument.
    """
    from .compat import deprecated
    from .datasets import argument_defaults, dataset_arguments

    dataset_params = set(argument_defaults())
    moved = {k: legacy.pop(k) for k in list(legacy) if k in dataset_params}
    if len(legacy_positional) > 2:
        raise TypeError(f"{where}() takes at most 4 positional arguments")
    moved.update(zip(("source", "root"), legacy_positional))
    args = {} if data is None else dataset_arguments(data)
    clash = [k for k in moved if k in args]
    if clash:
        raise TypeError(f"{where}() got {clash[0]!r} both in data= and as a deprecated keyword; pass it in data=")
    if moved:
        names = ", ".join(moved)
        deprecated(f"passing {names} to {where}() directly is deprecated; pass them in data={{...}}", stacklevel=4)
    return {**args, **moved}


def _jsonable(value):
    """A dataset argument as results record it (paths as text, objects by their identity)."""
    import dataclasses

    from .classes import ClassList
    from .masks import Masks
    from .tokens import TokenBank

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, TokenBank):
        return {"token_bank": value.fingerprint, "classes": len(value), "base_model": value.base_model}
    if isinstance(value, ClassList):
        return {"class_list": value.name, "classes": len(value)}
    if isinstance(value, Masks):
        return {"masks": value.source}
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def evaluate(
    classifier=None,
    data=None,
    *legacy_positional,
    shifts=None,
    weights: str | None = None,
    transform: Callable | None = None,
    name: str | None = None,
    class_map=None,
    restrict: bool = False,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool | None = None,
    predictions: str | os.PathLike | None = None,
    progress: bool = True,
    worst_k: int = 10,
    **legacy,
) -> Results:
    """Evaluate a classifier on every requested shift of a data source.

    Args:
        classifier: a spec string (``torchvision:resnet50``, ``timm:...``, ``hf:...``, ``file.py:fn``,
            ``pkg.mod:fn``, ``model.pt``), an ``nn.Module``, or a :class:`~dsi_bench.models.LoadedModel`.
        data: the data, as one object: a :class:`~dsi_bench.ShiftedImageNet` (its arguments are reused
            for every shift) or a dict of its arguments, e.g. ``{"source": "shards", "root": "shards/"}``
            or ``{"source": "synth", "generator": "./sd2", "tokens": "tokens.zip", "device": "cuda"}``
            (generation settings live here, so they never collide with the classifier's). JPEGs are
            decoded in full unless it says ``"fast_decode": True`` (draft decoding, recorded in
            ``results.run["decode"]``; a leaderboard never ranks the two modes together).
        shifts: ``"all"`` (every shift the source holds; the default for a dict), ``"base,in_the_snow"``
            or a list. For a dataset the default is its shift, with ``base`` for the paired metrics.
        weights, transform: passed to :func:`~dsi_bench.models.load_model`; ``transform`` is the
            classifier's preprocessing (a dataset's own transform is not used).
        name: display name in tables and leaderboards (default: the spec and weights).
        class_map: a :class:`~dsi_bench.models.ClassMap` or JSON path, for classifiers whose outputs
            are not the label space's classes.
        restrict: predict only among the evaluated classes (when evaluating a subset).
        batch_size, num_workers: the classifier's ``DataLoader`` (workers default: up to 4; 0 for
            ``"synth"``).
        device, amp, channels_last: where and how to run the classifier (AMP: fp16 on CUDA, bf16 on CPU;
            ``channels_last`` defaults to on for CUDA).
        predictions: also write per-sample predictions here now, as CSV (``key,label,prediction,top5,
            confidence``; gzip-compressed for a ``.gz`` path), which ``dsi-bench score`` reads back to the
            same results. Without it, ``results.save(path)`` keeps them beside the results
            (``NAME.predictions.csv.gz``), where the visual report finds them.

    Deprecated (0.2): ``evaluate(model, shifts, source, root, classes=..., masks=..., ...)``; the
    classifier was ``model=`` and the data's arguments were keywords of ``evaluate`` itself.

    Returns:
        :class:`~dsi_bench.results.Results`, with every setting of the run in ``results.run``.

    Raises:
        SpecError, ShardError, ReleaseError, MaskError, ModelLoadError, OfflineError: bad input,
            before the first batch where possible.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .compat import deprecated, reject_unknown, renamed
    from .datasets import ShiftedDataset, argument_defaults, label_space
    from .dist import World, init_process_group
    from .files import check_writable
    from .pipeline import resolve_device
    from .results import RunConfig
    from .validate import check_non_negative_int, check_positive_int

    classifier = renamed(legacy, "model", "classifier", classifier, where="evaluate: ")
    if classifier is None:
        raise TypeError("evaluate() needs the classifier to evaluate (first argument)")
    if isinstance(data, (str, list, tuple)):  # evaluate(model, "all", ...) before 0.2: the shifts
        deprecated("evaluate(classifier, SHIFTS, ...) is now evaluate(classifier, data, shifts=SHIFTS)")
        data, shifts = None, data
    own_shift = data.shift.id if isinstance(data, ShiftedDataset) else None
    args = data_arguments(data, legacy_positional, legacy, "evaluate")
    reject_unknown(legacy, "evaluate")
    if "source" not in args and "root" not in args:
        raise SpecError("evaluate needs data=: a ShiftedImageNet or a dict of its arguments, e.g. "
                        "{'source': 'shards', 'root': 'shards/'}")
    if shifts is None:
        shifts = "all" if own_shift is None else (["base"] if own_shift != "base" else []) + [own_shift]
    check_positive_int(batch_size, "batch_size", example=64)
    if num_workers is not None:
        check_non_negative_int(num_workers, "num_workers")
    if predictions is not None:
        check_writable(predictions, "predictions file")  # before the model loads, not after the last batch
    defaults = argument_defaults()
    source, root = args.get("source", defaults["source"]), args.get("root")
    loaded: LoadedModel = load_model(classifier, weights, transform)
    class_list = label_space(args)  # class_list=, else what the data records (a custom bank's), else ImageNet-1k
    if class_map is not None and not isinstance(class_map, ClassMap):
        class_map = ClassMap.load(class_map, class_list)
    if class_map is None and loaded.num_outputs is not None and loaded.num_outputs != len(class_list):
        raise SpecError(f"{loaded.name} has {loaded.num_outputs} outputs but the label space has {len(class_list)} "
                        "classes; pass a class map (class_map=, --class-map FILE) saying which class each output is")
    if class_map is not None and loaded.num_outputs is not None and loaded.num_outputs != len(class_map):
        raise SpecError(f"the class map {class_map.source!r} lists {len(class_map)} outputs but {loaded.name} has "
                        f"{loaded.num_outputs}")
    device = resolve_device(device, check=True)
    dist, created = init_process_group(device)
    if dist is not None:
        device = World.from_env().device(device)
    shift_ids = resolve_shifts(shifts, source, root)
    is_cuda = device.startswith("cuda")
    channels_last = is_cuda if channels_last is None else channels_last
    module = loaded.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    amp_dtype = torch.float16 if is_cuda else torch.bfloat16
    if num_workers is None:
        num_workers = 0 if source == "synth" else min(4, os.cpu_count() or 1)
    rank0 = dist is None or dist.get_rank() == 0

    preds: dict[str, ShiftPredictions] = {}
    fingerprints: dict[str, str] = {}
    shift_defs: dict = {}
    data_root = None
    draft = None
    backend_masks = None
    checked_reads = None
    try:
        for shift_id in shift_ids:
            ds = ShiftedDataset(shift_id, **args, transform=loaded.transform)
            expected = ds.keys
            if not expected:
                raise DsiBenchError(f"shift {shift_id!r} of {source} {root!r} has no samples to evaluate "
                                    "(empty source, or every sample masked out)")
            fingerprints[shift_id] = ds.fingerprint()
            shift_defs[shift_id] = ds.shift
            data_root = ds.backend.data_fingerprint
            draft, backend_masks = ds.draft, ds.backend.masks
            checked_reads = getattr(ds.backend, "checked_reads", None)  # shards: sha256 checked (None: no checksums)
            predictor = _Predictor(len(class_list), class_map, ds.class_indices if restrict else None)
            loader = DataLoader(ds.stream(return_key=True), batch_size=batch_size, num_workers=num_workers,
                                pin_memory=is_cuda, persistent_workers=False,
                                prefetch_factor=4 if num_workers else None)
            keys: list[str] = []
            labels, tops, confidences = [], [], []
            with torch.inference_mode(), tqdm(total=len(expected), desc=shift_id, unit="img",
                                              disable=not (progress and rank0), dynamic_ncols=True) as bar, \
                    _worker_errors_unwrapped():
                for x, y, k in loader:
                    x = x.to(device, non_blocking=is_cuda)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype, enabled=amp):
                        logits = module(x)
                    top, confidence = predictor(logits)
                    tops.append(top)
                    confidences.append(confidence)
                    labels.append(y)
                    keys.extend(k)
                    bar.update(len(k))
            shard = (keys, torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
                     torch.cat(tops).numpy() if tops else np.zeros((0, 5), np.int64),
                     torch.cat(confidences).numpy().astype(np.float32) if confidences else np.zeros(0, np.float32))
            if dist is not None:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, shard)
                keys = [k for g in gathered for k in g[0]]
                shard = (keys, *(np.concatenate([g[i] for g in gathered]) for i in (1, 2, 3)))
            if len(keys) != len(expected) or set(keys) != set(expected):
                seen = set(keys)
                missing = [k for k in expected if k not in seen]
                raise DsiBenchError(f"{shift_id}: evaluated {len(keys)} samples ({len(seen)} distinct) but the source "
                                    f"selects {len(expected)}; missing e.g. {missing[:3]}")
            preds[shift_id] = ShiftPredictions(*shard).sorted()
        world_size = dist.get_world_size() if dist is not None else 1
    finally:
        if created:
            dist.destroy_process_group()
    info = data_info(source, root, args.get("masks", False), args.get("classes"), fingerprints, data_root,
                     backend_masks=backend_masks)
    info["checked_reads"] = checked_reads
    model_info = {
        "name": name or loaded.name,
        "spec": loaded.spec,
        "weights": loaded.weights,
        "preprocessing": loaded.preprocessing,
        "num_outputs": loaded.num_outputs,
        "class_map": None if class_map is None else class_map.source,
        "restricted_to_evaluated_classes": bool(restrict),
        "amp": bool(amp),
    }
    run = RunConfig(batch_size=batch_size, num_workers=num_workers, device=device, amp=bool(amp),
                    amp_dtype=str(amp_dtype).replace("torch.", "") if amp else None, channels_last=bool(channels_last),
                    decode="draft" if draft else "full", draft_size=draft, restrict=bool(restrict),
                    class_map=None if class_map is None else class_map.source, world_size=world_size,
                    dataset=_jsonable({**{k: defaults[k] for k in _RECORDED_DEFAULTS}, **args}))
    results = build_results(preds, class_names=class_list.names, model=model_info, data=info,
                            label_space=class_list.name, hardware=hardware_info(device), run=run, worst_k=worst_k,
                            shift_defs=shift_defs)
    results.predictions = preds
    if predictions is not None and rank0:
        _write_predictions_keeping(preds, predictions, results)
        results.predictions_file = Path(predictions).expanduser()
    return results


def _write_predictions_keeping(preds: dict[str, ShiftPredictions], path, results: Results) -> None:
    """Write the predictions; when that fails, keep them and the results elsewhere and say where."""
    from .files import atomic_write, keep_elsewhere, write_or_keep

    try:
        write_or_keep(path, lambda p: write_predictions(preds, p), "the predictions")
    except CacheError as e:
        kept = keep_elsewhere(lambda p: atomic_write(p, results.to_bytes()), "results.json")
        raise CacheError(f"{e}; the results were " + (f"kept in {str(kept)!r}" if kept else "not kept either")) from e


@contextlib.contextmanager
def _worker_errors_unwrapped():
    """Re-raise a :class:`DsiBenchError` from a ``DataLoader`` worker as the worker raised it.

    torch re-raises a worker's exception as the same type with its whole traceback as the message
    (``Caught ShardError in DataLoader worker process 0. Original Traceback ...``); the message the
    worker's error had is the text after the traceback's last ``module.Type: ``.
    """
    try:
        yield
    except DsiBenchError as e:
        text, prefix = str(e), f"{type(e).__module__}.{type(e).__qualname__}: "
        at = text.rfind(prefix)
        if not (text.startswith("Caught ") and "Original Traceback" in text and at >= 0):
            raise
        raise type(e)(text[at + len(prefix):].rstrip("\n")) from e
