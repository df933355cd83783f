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

from .classes import ClassList, imagenet_classes
from .errors import SpecError
from .files import atomic_write, ensure_writable_dir
from .images import encode_image
from .pipeline import PipelineSpec, check_model
from .shifts import Shift, get_shift
from .synthesis import Synthesizer, make_requests
from .tokens import TokenBank

__all__ = ["generate_folder", "run_demo", "run_demo_eval", "run_demo_shards"]

logger = logging.getLogger(__name__)

_FORMATS = {"png": "PNG", "jpg": "JPEG"}


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
    spec: PipelineSpec | None = None,
    tokens: TokenBank | str | os.PathLike | None = "imagenet-star",
    class_list: ClassList | None = None,
    image_format: str = "png",
    quality: int = 95,
    cache_dir: str | os.PathLike | bool | None = None,
    progress: bool = True,
) -> list[dict]:
    """Generate image folders, one per shift, resuming where a previous run stopped.

    Args:
        out: output folder.
        shifts: shift names, templates, phrases or :class:`Shift` objects.
        classes: class spec (``"0-9,207"``); default all.
        per_class: images per class.
        seed: base seed.
        spec: pipeline spec (default: the reference's).
        tokens: class tokens (see :func:`~dsi_bench.tokens.load_tokens`); ``None`` = class names.
        class_list: label space (default ImageNet-1k).
        image_format: ``"png"`` or ``"jpg"``.
        quality: JPEG quality.
        cache_dir: sample cache; ``None`` = default, ``False`` = none.
        progress: show a progress bar.

    Returns:
        One summary dict per shift: ``shift``, ``folder``, ``images``, ``generated``, ``seconds``.
    """
    from tqdm.auto import tqdm

    if image_format not in _FORMATS:
        raise SpecError(f"image format {image_format!r} is not supported; use png or jpg")
    if not 1 <= quality <= 100:
        raise SpecError(f"JPEG quality {quality} must be within 1..100, e.g. 95")
    if not isinstance(per_class, int) or per_class <= 0:
        raise SpecError(f"per_class={per_class!r} must be a positive integer, e.g. 50")
    out = ensure_writable_dir(out, "output folder")
    spec = spec or PipelineSpec()
    check_model(spec.model)
    class_list = class_list or imagenet_classes()
    indices = class_list.resolve(classes)
    shift_objs = [get_shift(s) for s in shifts]
    synth = Synthesizer.open(spec, tokens, class_list, indices, cache_dir)
    ext = image_format
    summary = []
    for shift in shift_objs:
        folder = out / shift.id
        meta_path = folder / "metadata.jsonl"
        rows = _read_metadata(meta_path)
        requests = make_requests(shift, indices, per_class, seed)
        todo = []
        for r in requests:
            rel = f"{r.class_index:04d}/{r.index:02d}.{ext}"
            row = rows.get(rel)
            if row is None or row.get("cache_key") != synth.cache_key(r) or not (folder / rel).is_file():
                todo.append(r)
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc=shift.id, unit="img", disable=not progress or not todo, dynamic_ncols=True)
        with bar, open(meta_path, "a", encoding="utf-8") as log:
            for i in range(0, len(todo), spec.batch_size):
                for sample in synth.samples(todo[i : i + spec.batch_size]):
                    r = sample.request
                    rel = f"{r.class_index:04d}/{r.index:02d}.{ext}"
                    atomic_write(folder / rel, encode_image(sample.image, ext, quality))
                    row = {
                        **sample.metadata,
                        "file": rel,
                        "format": ext,
                        "quality": quality if ext == "jpg" else None,
                        "cache_key": synth.cache_key(r),
                    }
                    rows[rel] = row
                    log.write(json.dumps(row, sort_keys=True) + "\n")
                log.flush()
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


#: What ``make demo`` generates: a few shifts, a few classes, on the tiny random pipeline.
DEMO_SHIFTS = ("base", "in the snow", "at night", "oil painting", "a watercolor painting of a <TOKEN>")


def run_demo(out: str | os.PathLike = "demo_out", *, progress: bool = True) -> list[dict]:
    """Offline end-to-end run: build the tiny pipeline and tokens, then generate shifted folders."""
    from .testing import save_tiny_pipeline, save_tiny_tokens

    out = ensure_writable_dir(out, "demo folder")
    model, tokens = out / "tiny-sd", out / "tiny-tokens.safetensors"
    if not (model / "model_index.json").is_file():
        save_tiny_pipeline(model)
    if not tokens.is_file():
        save_tiny_tokens(tokens)
    spec = PipelineSpec(model=str(model), steps=10, out_size=None, batch_size=8)
    plan = dict(shifts=DEMO_SHIFTS, classes="0-3,207", per_class=4, spec=spec, tokens=tokens, cache_dir=out / "cache",
                progress=progress)
    return generate_folder(out / "images", **plan)


def run_demo_shards(out: str | os.PathLike = "demo_out", *, progress: bool = True):
    """The demo's samples as verified WebDataset shards (served from the demo's sample cache)."""
    from .build import build_shards
    from .shards import verify_shards

    out = Path(out)
    spec = PipelineSpec(model=str(out / "tiny-sd"), steps=10, out_size=None, batch_size=8)
    summary = build_shards(out / "shards", shifts=DEMO_SHIFTS, classes="0-3,207", per_class=4, spec=spec,
                           tokens=out / "tiny-tokens.safetensors", cache_dir=out / "cache", image_format="png",
                           samples_per_shard=10, progress=progress)
    return summary, verify_shards(out / "shards")


def run_demo_eval(out: str | os.PathLike = "demo_out", *, progress: bool = True):
    """Evaluate three tiny random classifiers on the demo shards; write results and a leaderboard.

    Returns:
        ``(results of the first model, leaderboard paths)``.
    """
    from .evaluate import evaluate
    from .leaderboard import make_leaderboard
    from .testing import tiny_classifier

    out = Path(out)
    first = None
    for name, seed, width in (("tiny-cnn-a", 0, 8), ("tiny-cnn-b", 1, 16), ("tiny-cnn-c", 2, 4)):
        module, transform = tiny_classifier(seed=seed, width=width)
        results = evaluate(module, "all", source="shards", root=out / "shards", transform=transform, name=name,
                           num_workers=0, progress=progress)
        results.save(out / "results" / f"{name}.json")
        first = first or results
    return first, make_leaderboard(out / "results", out / "leaderboard")
