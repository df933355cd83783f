"""The method, on the embedded trained world: learned tokens bring their class back, shifts change what a
classifier sees, the CLIP filter drops failed generations, and regressions that break the method fail here.

Shifted images are prompted with the world's learned tokens, as the world study does; the tokens compose
with shift phrases ("a photo of a <goldfish> in the grass") about as well as the class words do.

Every image comes through the package's own path (``ShiftedDataset`` -> synthesis -> the diffusers
pipeline loaded from the shipped folder, tokens injected with ``load_textual_inversion``). Bounds are
looser than ``benchmarks/bench_world.py``'s targets (fewer samples here).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dsi_bench.demo import world_study_pipeline
from dsi_bench.world import WORLD_CLASSES
from dsi_bench.world.quality import clip_prefers_shift, generate, predict, render_accuracy

PER_CLASS = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("world-cache")


def _top1(shift="base", tokens="world", classifier="world:base", cache=None, **pipeline):
    images, labels = generate(shift, per_class=PER_CLASS, tokens=tokens, pipeline=world_study_pipeline(**pipeline),
                              cache_dir=cache)
    return float((predict(images, classifier) == labels).mean()), images, labels


def test_the_world_classifiers_know_their_classes_and_differ_in_robustness():
    assert render_accuracy("world:base", "base", per_class=10) >= 0.95
    # trained on backgrounds and colours too, world:augmented survives the grass; world:base does not
    grass_base = render_accuracy("world:base", "in_the_grass", per_class=10)
    grass_aug = render_accuracy("world:augmented", "in_the_grass", per_class=10)
    assert grass_aug >= 0.9 and grass_base <= grass_aug - 0.4


def test_learned_tokens_bring_their_class_back(cache):
    tokens, _, _ = _top1(tokens="world", cache=cache)
    words, _, _ = _top1(tokens=None, cache=cache)
    assert tokens >= 0.8, tokens  # chance is 0.1; the tokens started from the word "object"
    assert tokens >= words - 0.1, (tokens, words)


def test_a_token_injected_into_the_wrong_row_is_caught(cache, tmp_path):
    """If a class's prompt carried another class's token, the labels would lie: the base classifier sees
    the neighbour class, and the learned-token test above fails."""
    from dsi_bench.tokens import TokenBank, load_tokens

    bank = load_tokens("world")
    rolled = TokenBank(bank.embeddings.roll(1, dims=0), bank.class_infos, bank.tokens, base_model=bank.base_model)
    path = rolled.save(tmp_path / "rolled.safetensors")
    top1, images, labels = _top1(tokens=str(path), cache=cache)
    assert top1 <= 0.3, top1
    order = [c.index for c in bank.class_infos]
    neighbour = np.array([order[(order.index(y) - 1) % len(order)] for y in labels])
    assert float((predict(images) == neighbour).mean()) >= 0.5  # they show the class whose row they got


@pytest.mark.slow
def test_a_wrong_prediction_type_is_caught(cache, tmp_path):
    """The world is trained with v-prediction, as SD2; a scheduler that reads its output as noise makes no class."""
    from dsi_bench.embedded import world_file

    folder = tmp_path / "epsilon"
    shutil.copytree(world_file("generator"), folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "epsilon"}))
    top1, _, _ = _top1(model=str(folder), cache=cache)
    assert top1 <= 0.4, top1


def test_shifts_move_the_classifier_the_expected_way(cache):
    base, _, _ = _top1(cache=cache)
    night, _, _ = _top1("at_night", cache=cache)
    grass, _, _ = _top1("in_the_grass", cache=cache)
    grass_aug, _, _ = _top1("in_the_grass", classifier="world:augmented", cache=cache)
    assert base >= 0.9 and night <= base - 0.5 and grass <= base - 0.4, (base, night, grass)
    assert grass_aug >= grass + 0.4, (grass, grass_aug)  # the augmented classifier is robust to backgrounds


def test_learned_tokens_compose_with_a_shift_phrase(cache):
    # judged by the classifier that knows backgrounds: the class must survive "in the grass"
    tokens, _, _ = _top1("in_the_grass", classifier="world:augmented", cache=cache)
    words, _, _ = _top1("in_the_grass", tokens=None, classifier="world:augmented", cache=cache)
    assert tokens >= 0.75 and tokens >= words - 0.15, (tokens, words)


@pytest.mark.slow
def test_the_world_clip_sees_the_shift_and_the_filter_drops_failures(cache, tmp_path):
    from dsi_bench.clip_metric import Thresholds, clip_scores, rule_captions, world_thresholds

    _, images, labels = _top1("in_the_snow", cache=cache)
    assert clip_prefers_shift(images, labels, "in_the_snow").mean() >= 0.7
    thresholds = Thresholds.load(world_thresholds())
    shifts = ["base", "at_night", "in_the_fog"]
    all_images, right, keep = [], [], []
    for shift in shifts:
        _, imgs, ys = _top1(shift, cache=cache)
        right += list(predict(imgs) == ys)
        names = {c.index: c.name for c in WORLD_CLASSES}
        texts = [rule_captions("reference", shift, names[int(y)]) for y in ys]
        scores = clip_scores(imgs, [t[0] for t in texts], [t[1] for t in texts], clip="world")
        keep += list(thresholds.keep(scores["object_score"], scores["shift_score"], [shift] * len(imgs)))
        all_images += imgs
    right, keep = np.array(right), np.array(keep)
    assert 0 < keep.sum() < len(keep)
    assert right[keep].mean() >= right[~keep].mean() + 0.15, (right[keep].mean(), right[~keep].mean())
