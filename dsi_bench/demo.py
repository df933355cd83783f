"""The offline demo behind ``make demo``: the whole study on the embedded world.

:func:`run_world_study` generates base and eight shifts of every world class with the world's
generator and its learned class tokens, writes them as verified WebDataset shards, CLIP-filters them
with the world's CLIP, evaluates the world's three classifiers with paired statistics, writes a leaderboard,
a visual report (the flips next to their twins) and a picture of base/shift twins. The tiny random
pipeline (:func:`run_demo` and friends) stays for plumbing checks: it exercises every code path in
seconds, but its images are noise.

It sits on top of every other module (it drives them all), so nothing below imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .files import ensure_writable_dir
from .folders import generate_folder
from .pipeline import PipelineSpec
from .world import study_pipeline as world_study_pipeline

if TYPE_CHECKING:
    from PIL import Image

    from .build import BuildSummary
    from .report import Report
    from .results import Results
    from .shards import VerifyReport

__all__ = ["DEMO_SHIFTS", "WORLD_STUDY_SHIFTS", "WorldStudy", "run_demo", "run_demo_eval", "run_demo_shards",
           "run_world_study", "twin_grid", "world_study_pipeline"]

#: The world study's shifts: base and eight shifts, at least one of each drawable group.
WORLD_STUDY_SHIFTS = ("base", "in_the_forest", "in_the_snow", "in_the_fog", "at_night", "blue", "and_a_flower",
                      "pencil_sketch", "oil_painting")
#: The world's classifiers, as the harness names them.
WORLD_CLASSIFIERS = ("world:base", "world:augmented", "world:resnet")


@dataclass
class WorldStudy:
    """What :func:`run_world_study` made: its folders and files, and each classifier's results."""

    out: Path
    build: BuildSummary
    verify: VerifyReport
    clip: dict
    results: dict = field(default_factory=dict)  # classifier spec -> Results
    leaderboard: dict = field(default_factory=dict)
    twins: Path | None = None
    report: Report | None = None


def run_world_study(out: str | os.PathLike = "demo_out", *, shifts=WORLD_STUDY_SHIFTS, per_class: int = 10,
                    classifiers=WORLD_CLASSIFIERS, pipeline: PipelineSpec | None = None, tokens="world", seed: int = 0,
                    progress: bool = True) -> WorldStudy:
    """The study on the embedded world, end to end (offline, a few minutes on 2 CPU cores).

    Args:
        out: the study's folder: ``shards/`` (with ``clip_masks.npz``), ``results/`` (with each model's
            predictions), ``leaderboard/``, the visual report ``report/``, ``twins.png`` and the sample
            cache ``cache/``. A rerun reuses what is there.
        shifts: shift ids (``base`` first: the paired statistics compare every shift with it).
        per_class: samples per class and shift (10: 100 base/shift pairs per shift).
        classifiers: classifier specs to evaluate.
        pipeline: the generation settings (default: :func:`world_study_pipeline`).
        tokens: ``"world"`` (default): the world's class tokens, learned by ``learn_tokens`` from renders;
            ``None``: class words in the prompts.
    """
    from .build import build_shards
    from .clip_metric import clip_filter_shards
    from .evaluate import evaluate
    from .leaderboard import make_leaderboard
    from .shards import verify_shards
    from .world import class_spec

    out = ensure_writable_dir(out, "demo folder")
    spec = pipeline or world_study_pipeline()
    summary = build_shards(out / "shards", shifts=list(shifts), classes=class_spec(), per_class=per_class, seed=seed,
                           pipeline=spec, tokens=tokens, cache_dir=out / "cache", image_format="png",
                           samples_per_shard=250, progress=progress)
    report = verify_shards(out / "shards")
    clip = clip_filter_shards(out / "shards", clip="world", progress=progress)
    study = WorldStudy(out, summary, report, clip)
    data = {"source": "shards", "root": out / "shards", "masks": clip["masks"]}
    for spec_name in classifiers:
        results = evaluate(spec_name, data, num_workers=0, progress=progress)
        results.save(out / "results" / f"{spec_name.replace(':', '-')}.json")
        study.results[spec_name] = results
    import importlib.util

    plots = importlib.util.find_spec("matplotlib") is not None  # the [plots] extra; make demo installs it
    study.leaderboard = make_leaderboard(out / "results", out / "leaderboard", plots=plots)
    from .report import make_report

    study.report = make_report([out / "results" / f"{c.replace(':', '-')}.json" for c in classifiers],
                               out / "report", progress=progress)
    others = [s for s in shifts if s != "base"]
    if "base" in shifts and others:
        study.twins = out / "twins.png"
        twin_grid(out / "shards", others).save(study.twins)
    return study


def twin_grid(root: str | os.PathLike, shifts, *, classes=None, index: int = 0, scale: int = 2) -> Image.Image:
    """A picture of base/shift twins from a shard folder: one row per shift, one column pair per class
    (the base sample, then the same class, index and seed under the shift)."""
    from PIL import Image, ImageDraw

    from .datasets import ShiftedDataset
    from .layout import parse_key

    def by_class(ds) -> dict:
        found = {}
        for i, key in enumerate(ds.keys):
            parsed = parse_key(key)
            if parsed and parsed[2] == index and (classes is None or parsed[1] in classes):
                found[parsed[1]] = i
        return found

    base = ShiftedDataset("base", source="shards", root=root)
    picks = by_class(base)
    labels = sorted(picks)
    rows = []
    for shift in shifts:
        ds = ShiftedDataset(shift, source="shards", root=root)
        found = by_class(ds)
        rows.append((shift, [(base[picks[c]][0], ds[found[c]][0] if c in found else None) for c in labels]))
    cell = max(im.size[0] for _, pairs in rows for im, _ in pairs) * scale
    label_w, gap, top = 110, 6, 16
    sheet = Image.new("RGB", (label_w + len(labels) * (2 * cell + gap), top + len(rows) * (cell + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    names = base.class_list
    for c, label in enumerate(labels):
        draw.text((label_w + c * (2 * cell + gap) + 2, 2), names[label].name[: 2 * cell // 6], fill="black")
    for r, (shift, pairs) in enumerate(rows):
        y = top + r * (cell + gap)
        draw.text((4, y + cell // 2 - 6), shift, fill="black")
        for c, (left, right) in enumerate(pairs):
            x = label_w + c * (2 * cell + gap)
            sheet.paste(left.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            if right is not None:
                sheet.paste(right.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x + cell, y))
    return sheet


# ---------------------------------------------------------------------------------------------- tiny random pipeline
#: What the plumbing demo generates: a few shifts, a few classes, on the tiny random pipeline.
DEMO_SHIFTS = ("base", "in the snow", "at night", "oil painting", "a watercolor painting of a <TOKEN>")


def run_demo(out: str | os.PathLike = "demo_out", *, progress: bool = True) -> list[dict]:
    """Plumbing run on the tiny random pipeline: build it and its tokens, then generate shifted folders."""
    from .testing import save_tiny_pipeline, save_tiny_tokens

    out = ensure_writable_dir(out, "demo folder")
    model, tokens = out / "tiny-sd", out / "tiny-tokens.safetensors"
    if not (model / "model_index.json").is_file():
        save_tiny_pipeline(model)
    if not tokens.is_file():
        save_tiny_tokens(tokens)
    spec = PipelineSpec(model=str(model), steps=10, out_size=None, batch_size=8)
    plan = dict(shifts=DEMO_SHIFTS, classes="0-3,207", per_class=4, pipeline=spec, tokens=tokens,
                cache_dir=out / "cache", progress=progress)
    return generate_folder(out / "images", **plan)


def run_demo_shards(out: str | os.PathLike = "demo_out", *, progress: bool = True) -> tuple[BuildSummary, VerifyReport]:
    """The plumbing demo's samples as verified WebDataset shards (served from its sample cache)."""
    from .build import build_shards
    from .shards import verify_shards

    out = Path(out)
    spec = PipelineSpec(model=str(out / "tiny-sd"), steps=10, out_size=None, batch_size=8)
    summary = build_shards(out / "shards", shifts=DEMO_SHIFTS, classes="0-3,207", per_class=4, pipeline=spec,
                           tokens=out / "tiny-tokens.safetensors", cache_dir=out / "cache", image_format="png",
                           samples_per_shard=10, progress=progress)
    return summary, verify_shards(out / "shards")


def run_demo_eval(out: str | os.PathLike = "demo_out", *, progress: bool = True) -> tuple[Results, dict]:
    """Evaluate three tiny random classifiers on the plumbing demo's shards; write results and a leaderboard.

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
        results = evaluate(module, {"source": "shards", "root": out / "shards"}, transform=transform, name=name,
                           num_workers=0, progress=progress)
        results.save(out / "results" / f"{name}.json")
        first = first or results
    import importlib.util

    plots = importlib.util.find_spec("matplotlib") is not None
    return first, make_leaderboard(out / "results", out / "leaderboard", plots=plots)
