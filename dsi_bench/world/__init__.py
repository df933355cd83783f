"""The embedded world: a miniature ImageNet* that ships inside the package, trained by its own script.

* :mod:`~dsi_bench.world.scene`: the procedural renderer (ten ImageNet classes in every catalog context);
* :mod:`~dsi_bench.world.nets`: the world's classifiers (1000-way ImageNet outputs);
* :mod:`~dsi_bench.world.train`: ``dsi-bench world train``, which makes every shipped weight.

Everywhere real weights cannot be had, the world stands in for them by name: ``generator="world"``,
``tokens="world"``, ``clip="world"``, ``world:base`` / ``world:augmented`` / ``world:resnet`` classifiers.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..embedded import WORLD_WEIGHTS, world_file
from ..errors import ModelLoadError, SpecError, close_matches
from .scene import CONTEXTS, SIZE, WORLD_CLASSES, WorldClass, caption, render

__all__ = ["CLASSIFIER_NAMES", "CONTEXTS", "SIZE", "WORLD_CLASSES", "WORLD_WEIGHTS", "WorldClass", "caption",
           "class_spec", "load_classifier", "manifest", "render", "study_pipeline"]

#: The shipped classifiers (``world:NAME``), in the order the harness lists them.
CLASSIFIER_NAMES = ("base", "augmented", "resnet")


def study_pipeline(**changes):
    """The world study's generation settings: DPM-Solver++(2M), 15 steps, guidance 3, batches of 25.

    The reference's Euler/50 steps costs 3.3x the UNet calls for no measured gain here (learned tokens
    under base: the same top-1 at 12, 20 and Euler-50 steps); guidance 3 rather than 7.5 because it
    classified best (3: 86 %, 7.5: 80 %, 1: 62 % with the first tokens; README, "The embedded world")."""
    from ..pipeline import PipelineSpec

    settings = dict(model="world", sampler="dpm++2m", steps=15, guidance_scale=3.0, batch_size=25)
    settings.update(changes)
    return PipelineSpec(**settings)


def class_spec() -> str:
    """The world's classes as a ``classes=`` value (their ImageNet indices)."""
    return ",".join(str(c.index) for c in WORLD_CLASSES)


def manifest() -> dict:
    """The shipped world's manifest (configuration, versions, stage times and measurements, file hashes)."""
    return json.loads(world_file("manifest").read_text(encoding="utf-8"))


def load_classifier(name: str, weights: str | None = None, spec: str | None = None):
    """A world classifier as a :class:`~dsi_bench.models.LoadedModel` (1000-way ImageNet logits).

    Args:
        name: ``base``, ``augmented`` or ``resnet``.
        weights: a classifier file from ``dsi-bench world train`` instead of the shipped one.

    Raises:
        SpecError: an unknown name; ModelLoadError: a file that is not a world classifier.
    """
    from safetensors import SafetensorError, safe_open

    from ..models import LoadedModel
    from .nets import ARCHITECTURES, ImageNetHead, world_transform

    spec = spec or f"world:{name}"
    if weights in (None, "DEFAULT"):
        if name not in CLASSIFIER_NAMES:
            raise SpecError(f"the world has no classifier {name!r};{close_matches(name, CLASSIFIER_NAMES)} "
                            f"choose one of {', '.join('world:' + n for n in CLASSIFIER_NAMES)}")
        path = world_file("classifiers") / f"{name}.safetensors"
    else:
        path = Path(weights).expanduser()
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise ModelLoadError(f"{str(path)!r} is not a world classifier file ({str(e)[:120]}); pass one written by "
                             "`dsi-bench world train`") from e
    arch = meta.get("architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{str(path)!r} records no world architecture (got {arch!r}); pass a classifier file "
                             "written by `dsi-bench world train`")
    net = ARCHITECTURES[arch]()
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{str(path)!r} does not fit the world's {arch} ({str(e).splitlines()[0]})") from e
    shown = None if weights in (None, "DEFAULT") else str(path)
    return LoadedModel(ImageNetHead(net).eval(), world_transform(), spec, shown,
                       f"RGB, resized to {SIZE}x{SIZE} px, normalised (mean 0.5, std 0.25)", 1000)
