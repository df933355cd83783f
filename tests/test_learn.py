"""Textual inversion on the tiny pipeline: loss, frozen weights, pinned norms, batching, resume, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from dsi_bench.errors import SpecError
from dsi_bench.learn import learn_tokens, load_training_data
from dsi_bench.tokens import TokenBank

NAMES = ("goldfish", "great white shark", "tench")  # ImageFolder order: sorted folder names


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    for name in NAMES:
        (root / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def spec(tiny_model):
    from dsi_bench.pipeline import PipelineSpec

    return PipelineSpec(model=str(tiny_model))


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_lowers_the_loss_and_touches_only_the_new_tokens(folder, spec, tiny_model):
    from transformers import CLIPTextModel, CLIPTokenizer

    from dsi_bench.pipeline import load_components

    base = load_components(spec)
    unet, vae = _state(base.unet), _state(base.vae)
    bank = learn_tokens(folder, pipeline=spec, max_steps=40, lr=0.05, resolution=32, classes_per_batch=3, eval_draws=8,
                        progress=False)
    loss = bank.extra["training"]["held_out_loss"]
    assert loss["after"] < loss["before"]
    assert all(torch.equal(v, base.unet.state_dict()[k]) for k, v in unet.items())
    assert all(torch.equal(v, base.vae.state_dict()[k]) for k, v in vae.items())
    # pinned norms: each token keeps the norm of the mean embedding of its class name's tokens
    tok = CLIPTokenizer.from_pretrained(tiny_model / "tokenizer")
    table = CLIPTextModel.from_pretrained(tiny_model / "text_encoder").get_input_embeddings().weight
    for c, name in enumerate(NAMES):
        init = table[tok(name, add_special_tokens=False).input_ids].mean(0)
        assert bank.embedding(c).norm().item() == pytest.approx(init.norm().item(), rel=1e-5)
        assert not torch.allclose(bank.embedding(c), init)
    assert bank.tokens == ("<goldfish-0>", "<great white shark-1>", "<tench-2>")
    assert bank.extra["training"]["steps_done"] == {"0": 40, "1": 40, "2": 40}


def test_batched_classes_equal_separate_training(folder, spec):
    together = learn_tokens(folder, pipeline=spec, max_steps=12, resolution=32, classes_per_batch=3, progress=False)
    for c in range(3):
        alone = learn_tokens(folder, pipeline=spec, max_steps=12, resolution=32, classes_per_batch=1, classes=[c],
                             progress=False)
        assert torch.allclose(together.embedding(c), alone.embedding(c), atol=1e-4)


def test_resume_continues_exactly(folder, spec, tmp_path):
    full = learn_tokens(folder, pipeline=spec, max_steps=10, resolution=32, classes_per_batch=2, progress=False)
    out = tmp_path / "bank.safetensors"
    first = learn_tokens(folder, pipeline=spec, max_steps=10, resolution=32, classes_per_batch=2, out=out,
                         max_steps_this_run=4, progress=False, save_every=2)
    assert first.extra["training"]["steps_done"] == {"0": 4, "1": 4, "2": 0}
    resumed = learn_tokens(folder, pipeline=spec, max_steps=10, resolution=32, classes_per_batch=2, out=out,
                           progress=False)
    assert resumed.extra["training"]["steps_done"] == {"0": 10, "1": 10, "2": 10}
    assert torch.allclose(resumed.embeddings, full.embeddings, atol=1e-6)
    # a finished bank is left untouched by a rerun
    before = out.read_bytes()
    again = learn_tokens(folder, pipeline=spec, max_steps=10, resolution=32, classes_per_batch=2, out=out,
                         progress=False)
    assert torch.equal(again.embeddings, resumed.embeddings)
    assert TokenBank.load(out).fingerprint == resumed.fingerprint
    assert before == out.read_bytes()  # not rewritten


def test_bad_training_data(folder, tmp_path, spec):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "b" / "x.png")
    with pytest.raises(SpecError, match="1 class has no images: 'a'"):
        load_training_data(tmp_path / "empty")
    with pytest.raises(SpecError, match="does not exist"):
        load_training_data(tmp_path / "nowhere")
    (tmp_path / "broken" / "tench").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "broken" / "tench" / "ok.png")
    (tmp_path / "broken" / "tench" / "bad.png").write_bytes(b"not an image")
    bank = learn_tokens(tmp_path / "broken", pipeline=spec, max_steps=2, resolution=32, progress=False)
    assert bank.extra["training"]["skipped_images"] == 1
    pairs = [(folder / "tench" / "0.png", "tench"), (folder / "goldfish" / "1.png", "goldfish"),
             (folder / "goldfish" / "2.png", "goldfish")]
    data = load_training_data(pairs)
    assert data.class_list.names == ["goldfish", "tench"] and len(data.items[0]) == 2 and len(data.items[1]) == 1


def test_cli_and_a_bank_of_another_width(folder, tiny_model, tmp_path, capsys):
    from dsi_bench.cli import main
    from dsi_bench.errors import TokenBankError
    from dsi_bench.testing import save_tiny_tokens

    out = tmp_path / "t.safetensors"
    assert main(["learn-tokens", "--data", str(folder), "--generator", str(tiny_model), "--out", str(out),
                 "--max-steps", "3", "--resolution", "32", "--classes", "0-1", "-q"]) == 0
    assert "2 of 2 classes finished (3 steps each, 32 px)" in capsys.readouterr().out
    assert TokenBank.load(out).tokens == ("<goldfish-0>", "<great white shark-1>")
    wide = save_tiny_tokens(tmp_path / "wide.safetensors", num_classes=3, dim=64)
    with pytest.raises(TokenBankError, match="holds 64-d tokens but .* needs 32-d"):
        learn_tokens(folder, generator=str(tiny_model), max_steps=2, resolution=32, out=wide, progress=False)
    assert main(["learn-tokens", "--data", str(tmp_path / "nowhere"), "--generator", str(tiny_model), "--out",
                 str(out), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_torchrun_ranks_split_the_classes(folder, tiny_model, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ranks.safetensors"
    args = ["learn-tokens", "--data", str(folder), "--generator", str(tiny_model), "--out", str(out),
            "--max-steps", "4", "--resolution", "32", "--classes-per-batch", "1", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(port), "-m", "dsi_bench.cli", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    merged = TokenBank.load(out)
    assert merged.extra["training"]["steps_done"] == {"0": 4, "1": 4, "2": 4} and merged.extra["training"]["ranks"] == 2
    alone = learn_tokens(folder, generator=str(tiny_model), max_steps=4, resolution=32, classes_per_batch=1,
                         progress=False)
    assert torch.allclose(merged.embeddings, alone.embeddings, atol=1e-4)


def test_hugging_face_dataset_input(folder, tmp_path):
    import datasets

    images = [Image.open(p).convert("RGB") for p in sorted((folder / "tench").iterdir())]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["tench", "koi"])})
    ds = datasets.Dataset.from_dict({"image": images + images[:1], "label": [0, 0, 0, 1]}, features=features)
    data = load_training_data(ds)
    assert data.class_list.names == ["tench", "koi"] and [len(data.items[c]) for c in (0, 1)] == [3, 1]
    ds.save_to_disk(str(tmp_path / "saved"))
    again = load_training_data(tmp_path / "saved", classes="koi")
    assert list(again.items) == [1] and len(again.items[1]) == 1
