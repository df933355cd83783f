"""Image folders: generate shifted samples to ``OUT/{shift_id}/{class:04d}/{index:02d}.{ext}``.

Each shift folder also gets ``metadata.jsonl``, one line per image (the sample's full
provenance plus ``file``, ``format``, ``quality``, ``cache_key``). Images are written
atomically and a rerun skips images whose metadata line says they were made with the same
settings, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .classes import ClassList
from .compat import reject_unknown, renamed
from .errors import CacheError
from .files import atomic_write, ensure_writable_dir, writing_into
from .images import check_image_options, encode_image
from .locks import folder_lock
from .pipeline import PipelineSpec, check_model
from .shifts import Shift, get_shift
from .synthesis import Synthesizer, make_requests
from .tokens import TokenBank, token_classes, tokens_class_list
from .validate import check_sample_counts

__all__ = ["generate_folder"]

logger = logging.getLogger(__name__)


def _read_metadata(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            rows[row["file"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash: its image is regenerated
    return rows


def generate_folder(
    out: str | os.PathLike,
    *,
    shifts: Iterable[str | Shift] = ("base",),
    classes: str | Sequence[int] | None = None,
    per_class: int = 50,
    seed: int = 0,
    pipeline: PipelineSpec | None = None,
    tokens: TokenBank | str | os.PathLike | None = "imagenet-star",
    class_list: ClassList | None = None,
    image_format: str = "png",
    quality: int = 95,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool = True,
    **deprecated_names,
) -> list[dict]:
    """Generate image folders, one per shift, resuming where a previous run stopped.

    Args:
        out: output folder.
        shifts: shift names, templates, phrases or :class:`Shift` objects.
        classes: class spec (``"0-9,207"``); default every class the tokens cover (all without tokens).
        per_class: images per class.
        seed: base seed.
        pipeline: pipeline spec (default: the reference's).
        tokens: class tokens (see :func:`~dsi_bench.tokens.load_tokens`); ``None`` = class names.
        class_list: label space (default: the classes a token bank learned on another dataset records,
            else ImageNet-1k); refused when it contradicts the bank's.
        image_format: ``"png"`` or ``"jpg"``.
        quality: JPEG quality.
        cache_dir: sample cache; ``None`` = default, ``False`` = none.
        progress: show a progress bar.

    Returns:
        One summary dict per shift: ``shift``, ``folder``, ``images``, ``generated``, ``seconds``.
    """
    spec = renamed(deprecated_names, "spec", "pipeline", pipeline, where="generate_folder: ") or PipelineSpec()
    reject_unknown(deprecated_names, "generate_folder")
    check_image_options(image_format, quality)
    shift_objs = [get_shift(s) for s in shifts]
    check_model(spec.model)
    class_list = tokens_class_list(tokens, class_list)
    indices = token_classes(tokens, class_list, classes, spec.model)
    check_sample_counts(per_class, len(indices), len(shift_objs))
    created: list[Path] = [] if Path(out).exists() else [Path(out)]
    out = ensure_writable_dir(out, "output folder")
    try:
        with folder_lock(out, "output folder"), writing_into(out, "output folder", "the images written so far are "
                                                             "kept: free some space and rerun to resume"):
            # the lock is released (its file removed) before the clean-up below
            synth = Synthesizer.open(spec, tokens, class_list, indices, cache_dir)
            return _generate_shifts(out, shift_objs, synth, spec, indices, per_class, seed, image_format, quality,
                                    progress, created)
    except BaseException:
        _remove_if_empty(created)  # a run that failed before writing an image leaves nothing behind
        raise


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the files and folders this run created, when they hold nothing (never anything else)."""
    for path in reversed(created):
        try:
            if path.is_dir():
                path.rmdir()  # only succeeds when empty
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
        except OSError:
            pass


def _generate_shifts(out: Path, shift_objs, synth, spec, indices, per_class, seed, ext, quality, progress,
                     created: list[Path]) -> list[dict]:
    from tqdm.auto import tqdm

    summary = []
    for shift in shift_objs:
        folder = out / shift.id
        meta_path = folder / "metadata.jsonl"
        rows = _read_metadata(meta_path)
        requests = make_requests(shift, indices, per_class, seed)
        todo, foreign = [], []
        for r in requests:
            rel = f"{r.class_index:04d}/{r.index:02d}.{ext}"
            row = rows.get(rel)
            if row is None and (folder / rel).exists():
                foreign.append(rel)  # every image this command writes is logged before it is written
            if row is None or row.get("cache_key") != synth.cache_key(r) or not (folder / rel).is_file():
                todo.append(r)
        if foreign:
            raise CacheError(f"{str(folder)!r} holds {len(foreign)} file(s) that generate did not write where it "
                             f"would write images ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                             "refusing to replace them: move them away, or choose another --out")
        start = time.perf_counter()
        created += [p for p in (folder, meta_path) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc=shift.id, unit="img", disable=not progress or not todo, dynamic_ncols=True)
        with bar, open(meta_path, "a", encoding="utf-8") as log:
            for i in range(0, len(todo), spec.batch_size):
                for sample in synth.samples(todo[i : i + spec.batch_size]):
                    r = sample.request
                    rel = f"{r.class_index:04d}/{r.index:02d}.{ext}"
                    row = {
                        **sample.metadata,
                        "file": rel,
                        "format": ext,
                        "quality": quality if ext == "jpg" else None,
                        "cache_key": synth.cache_key(r),
                    }
                    rows[rel] = row
                    log.write(json.dumps(row, sort_keys=True) + "\n")
                    log.flush()  # logged before written: a file at an image's path without a row is not ours
                    atomic_write(folder / rel, encode_image(sample.image, ext, quality))
                bar.update(min(spec.batch_size, len(todo) - i))
        ordered = sorted(rows.values(), key=lambda row: row["file"])
        atomic_write(meta_path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in ordered).encode())
        summary.append(
            {
                "shift": shift.id,
                "folder": str(folder),
                "images": len(requests),
                "generated": len(todo),
                "seconds": time.perf_counter() - start,
            }
        )
    return summary
