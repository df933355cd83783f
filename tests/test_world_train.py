"""``dsi-bench world train``: every stage runs through the package's own code, resumes, records what it made."""

from __future__ import annotations

import json

import pytest

from dsi_bench.world import train as world_train
from dsi_bench.world.train import STAGES, WorldConfig, train_world

TINY = WorldConfig(pool=60, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, checkpoint_every=1,
                   token_images=2, token_steps=1, clip_steps=2, clip_batch=8, classifier_steps=2,
                   classifier_batch=8, classifier_images=40)


@pytest.fixture
def small_measurements(monkeypatch):
    monkeypatch.setattr(world_train, "HELD_OUT_RENDERS", 40)
    monkeypatch.setattr(world_train, "CALIBRATION_RENDERS", 40)


def test_a_tiny_world_trains_resumes_and_records_itself(tmp_path, small_measurements):
    out = tmp_path / "world"
    manifest = train_world(out, TINY, jobs=1, progress=False)
    assert set(manifest["stages"]) == set(STAGES)
    files = manifest["files"]
    for name in ("pipeline/model_index.json", "pipeline/unet/diffusion_pytorch_model.safetensors",
                 "tokens.safetensors", "clip/model.safetensors", "clip/thresholds.json",
                 "classifiers/base.safetensors", "classifiers/augmented.safetensors", "classifiers/resnet.safetensors"):
        assert name in files and len(files[name]["sha256"]) == 64, name
    assert not any(name.startswith(".train") for name in files)  # checkpoints are not part of the world
    assert manifest["config"] == TINY.record() and manifest["versions"]["torch"]
    assert json.loads((out / "manifest.json").read_text())["files"] == files

    # the tokens were learned by learn_tokens from the word "object", not copied from the class words
    from dsi_bench.tokens import load_tokens

    bank = load_tokens(out / "tokens.safetensors")
    assert bank.extra["training"]["init"] == "object" and len(bank) == 10

    # a rerun resumes: nothing is trained again
    stamp = {s: (out / ".train" / f"{s}.done.json").stat().st_mtime_ns for s in STAGES}
    train_world(out, TINY, jobs=1, progress=False)
    assert stamp == {s: (out / ".train" / f"{s}.done.json").stat().st_mtime_ns for s in STAGES}

    # the same folder with other settings is refused, not mixed
    from dsi_bench.errors import SpecError

    with pytest.raises(SpecError, match="other settings.*unet_steps"):
        train_world(out, WorldConfig(**{**TINY.record(), "unet_steps": 3}), jobs=1, progress=False)


def test_an_interrupted_stage_resumes_from_its_checkpoint(tmp_path, small_measurements, monkeypatch):
    out = tmp_path / "world"
    config = WorldConfig(**{**TINY.record(), "vae_steps": 3})
    calls = []
    real = world_train._save_ckpt

    def save_then_stop(path, state):
        real(path, state)
        calls.append(state["step"])
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(world_train, "_save_ckpt", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_world(out, config, jobs=1, stages=("vae",), progress=False)
    assert calls == [1] and not (out / ".train" / "vae.done.json").exists()
    monkeypatch.setattr(world_train, "_save_ckpt", real)
    steps = []
    real_gen = world_train._gen
    def counting(cfg, stage, step):
        steps.append(step)
        return real_gen(cfg, stage, step)

    monkeypatch.setattr(world_train, "_gen", counting)
    record = train_world(out, config, jobs=1, stages=("vae",), progress=False)
    assert steps == [1, 2] and "vae" in record  # started at the checkpoint's step


def test_cli_world_train_refuses_an_unknown_stage(capsys):
    from dsi_bench.cli import main

    assert main(["world", "train", "--out", "x", "--stages", "vae,unet2"]) == 2
    assert "unknown stage(s) unet2" in capsys.readouterr().err


def test_cli_world_render_draws_every_class_in_every_context(tmp_path):
    from PIL import Image

    from dsi_bench.cli import main

    assert main(["world", "render", "--out", str(tmp_path / "w.png"), "--scale", "1"]) == 0
    assert Image.open(tmp_path / "w.png").size == (320, 768)


def test_the_world_generator_takes_its_own_classes_and_refuses_the_release_tokens(tmp_path, capsys):
    from dsi_bench import ShiftedImageNet
    from dsi_bench.cli import main
    from dsi_bench.world import WORLD_CLASSES

    world = [c.index for c in WORLD_CLASSES]
    assert ShiftedImageNet("in the snow", generator="world", tokens=None, per_class=1).class_indices == world
    assert ShiftedImageNet("base", generator="world", tokens="world", per_class=1).class_indices == world
    assert main(["generate", "--generator", "world", "--shift", "base", "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "belong to Stable Diffusion 2" in err and "--tokens none" in err and not (tmp_path / "o").exists()
