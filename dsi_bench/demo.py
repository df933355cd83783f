"""The offline demo behind ``make demo``: generate, build shards, evaluate, rank (tiny random models).

It sits on top of every other module (it drives them all), so nothing below imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .files import ensure_writable_dir
from .folders import generate_folder
from .pipeline import PipelineSpec

if TYPE_CHECKING:
    from .build import BuildSummary
    from .results import Results
    from .shards import VerifyReport

__all__ = ["DEMO_SHIFTS", "run_demo", "run_demo_eval", "run_demo_shards"]

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
    plan = dict(shifts=DEMO_SHIFTS, classes="0-3,207", per_class=4, pipeline=spec, tokens=tokens,
                cache_dir=out / "cache", progress=progress)
    return generate_folder(out / "images", **plan)


def run_demo_shards(out: str | os.PathLike = "demo_out", *, progress: bool = True) -> tuple[BuildSummary, VerifyReport]:
    """The demo's samples as verified WebDataset shards (served from the demo's sample cache)."""
    from .build import build_shards
    from .shards import verify_shards

    out = Path(out)
    spec = PipelineSpec(model=str(out / "tiny-sd"), steps=10, out_size=None, batch_size=8)
    summary = build_shards(out / "shards", shifts=DEMO_SHIFTS, classes="0-3,207", per_class=4, pipeline=spec,
                           tokens=out / "tiny-tokens.safetensors", cache_dir=out / "cache", image_format="png",
                           samples_per_shard=10, progress=progress)
    return summary, verify_shards(out / "shards")


def run_demo_eval(out: str | os.PathLike = "demo_out", *, progress: bool = True) -> tuple[Results, dict]:
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
        results = evaluate(module, {"source": "shards", "root": out / "shards"}, transform=transform, name=name,
                           num_workers=0, progress=progress)
        results.save(out / "results" / f"{name}.json")
        first = first or results
    import importlib.util

    plots = importlib.util.find_spec("matplotlib") is not None  # the [plots] extra; make demo installs it
    return first, make_leaderboard(out / "results", out / "leaderboard", plots=plots)
