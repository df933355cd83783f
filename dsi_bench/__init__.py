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
    "METRICS",
    "ClassList",
    "DsiBenchError",
    "PipelineSpec",
    "Results",
    "RunConfig",
    "SAMPLERS",
    "SampleCache",
    "Shift",
    "ShiftedDataset",
    "ShiftedImageNet",
    "Source",
    "Synthesizer",
    "TokenBank",
    "TokenTrainer",
    "TrainConfig",
    "build_shards",
    "clear_caches",
    "convert_release",
    "evaluate",
    "generate_folder",
    "get_shift",
    "imagenet_classes",
    "learn_tokens",
    "list_phrases",
    "list_shifts",
    "list_sources",
    "load_components",
    "load_model",
    "load_pipeline",
    "load_tokens",
    "make_leaderboard",
    "open_source",
    "register_metric",
    "register_model_kind",
    "register_source",
    "sample_seed",
    "score_predictions",
    "verify_shards",
    "__version__",
]

_EXPORTS = {
    "DsiBenchError": "errors",
    "PipelineSpec": "pipeline",
    "SAMPLERS": "pipeline",
    "load_pipeline": "pipeline",
    "load_components": "pipeline",
    "Source": "sources.base",
    "list_sources": "sources",
    "open_source": "sources",
    "register_source": "sources",
    "TokenTrainer": "learn",
    "TrainConfig": "learn",
    "learn_tokens": "learn",
    "METRICS": "metrics",
    "register_metric": "metrics",
    "RunConfig": "results",
    "register_model_kind": "models",
    "clear_caches": "memo",
    "SampleCache": "cache",
    "Shift": "shifts",
    "get_shift": "shifts",
    "list_shifts": "shifts",
    "list_phrases": "phrases",
    "ShiftedDataset": "datasets",
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
    "convert_release": "convert",
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
