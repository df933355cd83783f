"""Measurements of the world that say whether the method works (used by ``benchmarks/bench_world.py`` and the tests).

* :func:`render_accuracy`: a world classifier's top-1 on fresh renders of a context;
* :func:`generate`: images from the world's generator through the package's own synthesis path
  (learned tokens or class names, any shift), with their labels;
* :func:`predict`: a world classifier's predictions (ImageNet indices);
* :func:`brightness_contrast`, :func:`hue_share`: what a shift did to the pixels;
* :func:`clip_prefers_shift`: whether the world's CLIP ranks the shifted caption above the base one.
"""

from __future__ import annotations

import numpy as np

from .scene import COLOURS, WORLD_CLASSES, render_array

__all__ = ["brightness_contrast", "clip_prefers_shift", "generate", "hue_share", "predict", "render_accuracy"]

#: Seeds of held-out renders (no training stage draws from here).
HELD_OUT_SEED = 90_000_000


def predict(images, classifier: str = "world:base", batch_size: int = 256) -> np.ndarray:
    """ImageNet indices a classifier (``world:NAME`` or any spec :func:`~dsi_bench.models.load_model` takes)
    predicts for PIL images."""
    import torch

    from ..models import load_model

    loaded = load_model(classifier)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.stack([loaded.transform(im) for im in images[i:i + batch_size]])
            out.append(loaded.module(x).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, int)


def render_accuracy(classifier: str = "world:base", context: str = "base", per_class: int = 50) -> float:
    """Top-1 of a classifier on ``per_class`` held-out renders of each world class in ``context``."""
    from PIL import Image

    items = [(c.index, context, HELD_OUT_SEED + i) for i in range(per_class) for c in WORLD_CLASSES]
    images = [Image.fromarray(a) for a in render_array(items)]
    labels = np.array([c for c, _, _ in items])
    return float((predict(images, classifier) == labels).mean())


def generate(shift: str = "base", *, per_class: int = 10, tokens="world", pipeline=None, seed: int = 0,
             classes=None, cache_dir=None) -> tuple[list, np.ndarray]:
    """Images of every world class (or ``classes``) under ``shift`` from the world's generator, through
    :class:`~dsi_bench.ShiftedDataset` (the package's own synthesis path). ``tokens=None`` prompts with
    class names. Returns ``(PIL images, ImageNet labels)``."""
    from ..datasets import ShiftedDataset
    from . import study_pipeline as world_study_pipeline

    classes = classes or ",".join(str(c.index) for c in WORLD_CLASSES)
    ds = ShiftedDataset(shift, classes=classes, per_class=per_class, seed=seed, tokens=tokens,
                        pipeline=pipeline or world_study_pipeline(), cache_dir=cache_dir)
    samples = ds.__getitems__(range(len(ds)))  # one batched call: the pipeline's batches, not one at a time
    images = [s[0] for s in samples]
    labels = np.array([int(s[1]) for s in samples])
    return images, labels


def brightness_contrast(images) -> tuple[float, float]:
    """Mean brightness and mean per-image contrast (standard deviation of grey levels), both in [0, 1]."""
    grey = np.stack([np.asarray(im.convert("L"), float) / 255 for im in images])
    return float(grey.mean()), float(grey.reshape(len(grey), -1).std(1).mean())


def hue_share(images, colour: str) -> float:
    """The share of saturated pixels whose hue is within 1/12 turn of ``colour``'s."""
    import colorsys

    target = colorsys.rgb_to_hsv(*(np.asarray(COLOURS[colour]) / 255))[0]
    hsv = np.stack([np.asarray(im.convert("RGB").convert("HSV"), float) / 255 for im in images])
    saturated = (hsv[..., 1] > 0.35) & (hsv[..., 2] > 0.25)
    d = np.abs(hsv[..., 0] - target)
    near = np.minimum(d, 1 - d) < 1 / 12
    return float((near & saturated).sum() / max(1, saturated.sum()))


def clip_prefers_shift(images, labels, shift: str, clip: str = "world") -> np.ndarray:
    """Per image: whether CLIP scores "a photo of a {class} <shift>" above "a photo of a {class}"."""
    from ..clip_metric import ClipScorer
    from ..shifts import get_shift

    names = {c.index: c.name for c in WORLD_CLASSES}
    scorer = ClipScorer(clip)
    img = scorer.image_features(images)
    shifted = scorer.text_features([get_shift(shift).prompt(names[int(y)]) for y in labels])
    base = scorer.text_features([get_shift("base").prompt(names[int(y)]) for y in labels])
    return ((img * shifted).sum(1) > (img * base).sum(1)).cpu().numpy()
