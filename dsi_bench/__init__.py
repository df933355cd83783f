"""dsi-bench: dataset interfaces for robustness benchmarks.

A text-to-image diffusion model plus one learned token per class becomes a labelled test
set generator: ``ShiftedImageNet(shift="in the rain")`` is ImageNet under that shift.

Heavy dependencies (torch, diffusers, transformers) are imported lazily: ``import
dsi_bench`` is fast, and each name below loads its module on first use.
"""

from __future__ import annotations

import importlib

from .version import __version__

__all__ = [
    "DsiBenchError",
    "PipelineSpec",
    "SAMPLERS",
    "SampleCache",
    "Shift",
    "ShiftedImageNet",
    "Synthesizer",
    "TokenBank",
    "ClassList",
    "Results",
    "build_shards",
    "convert_release",
    "evaluate",
    "generate_folder",
    "get_shift",
    "load_model",
    "make_leaderboard",
    "score_predictions",
    "verify_shards",
    "imagenet_classes",
    "list_shifts",
    "load_pipeline",
    "load_tokens",
    "sample_seed",
    "__version__",
]

_EXPORTS = {
    "DsiBenchError": "errors",
    "PipelineSpec": "pipeline",
    "SAMPLERS": "pipeline",
    "load_pipeline": "pipeline",
    "SampleCache": "cache",
    "Shift": "shifts",
    "get_shift": "shifts",
    "list_shifts": "shifts",
    "ShiftedImageNet": "datasets",
    "Synthesizer": "synthesis",
    "sample_seed": "synthesis",
    "TokenBank": "tokens",
    "load_tokens": "tokens",
    "ClassList": "classes",
    "imagenet_classes": "classes",
    "generate_folder": "folders",
    "build_shards": "build",
    "verify_shards": "shards",
    "convert_release": "release",
    "evaluate": "evaluate",
    "Results": "results",
    "load_model": "models",
    "score_predictions": "score",
    "make_leaderboard": "leaderboard",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsi_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
