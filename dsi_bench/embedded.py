"""The embedded world's shipped files, by the name users give them: ``"world"``.

``generator="world"``, ``tokens="world"``, ``clip="world"`` and ``world:NAME`` classifiers name the
trained miniature ImageNet* that ships inside the package (``dsi_bench/world/weights``, made by
``dsi-bench world train``). This module only knows where those files are, so every layer can
resolve the name without importing the world's code.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError

__all__ = ["WORLD", "WORLD_WEIGHTS", "is_world", "resolve_world", "world_class_indices", "world_file"]

#: The name that stands for the embedded world.
WORLD = "world"
#: Where the shipped weights are.
WORLD_WEIGHTS = Path(__file__).resolve().parent / "world" / "weights"
_COMPONENTS = {"generator": "pipeline", "tokens": "tokens.safetensors", "clip": "clip", "classifiers": "classifiers",
               "manifest": "manifest.json"}


def world_file(component: str) -> Path:
    """The shipped file or folder of a component (``generator``, ``tokens``, ``clip``, ``classifiers``, ``manifest``).

    Raises:
        ModelLoadError: the file is missing (an install without the package's data files).
    """
    path = WORLD_WEIGHTS / _COMPONENTS[component]
    if not path.exists():
        raise ModelLoadError(f"the embedded world's {component} is missing ({path}); reinstall dsi-bench, or "
                             f"regenerate the world with `dsi-bench world train --out {WORLD_WEIGHTS}`")
    return path


def world_class_indices() -> list[int]:
    """The ImageNet indices of the world's classes (from the shipped manifest)."""
    import json

    return [int(c["index"]) for c in json.loads(world_file("manifest").read_text(encoding="utf-8"))["classes"]]


def is_world(value) -> bool:
    """Whether a generator/tokens/clip value names the embedded world (``"world"``) or one of its files."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text == WORLD:
            return True
        try:
            return Path(text).expanduser().resolve().is_relative_to(WORLD_WEIGHTS)
        except OSError:
            return False
    return False


def resolve_world(value, component: str):
    """``value`` with ``"world"`` replaced by the path of the world's ``component``; anything else unchanged."""
    if isinstance(value, str) and value == WORLD:
        return str(world_file(component))
    return value
