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


def test_a_save_that_fills_the_disk_is_one_line_and_resumes(folder, spec, tmp_path, monkeypatch):
    import dsi_bench.learn as learn
    from dsi_bench.errors import CacheError
    from dsi_bench.testing import disk_full_on_call

    out, real = tmp_path / "bank.safetensors", learn.atomic_write
    monkeypatch.setattr(learn, "atomic_write", disk_full_on_call(real, 2)[0])  # the second save's state
    args = dict(pipeline=spec, max_steps=6, resolution=32, classes_per_batch=3, out=out, progress=False)
    with pytest.raises(CacheError, match=r"No space left on device.*rerun the same command to resume") as e:
        learn_tokens(folder, save_every=2, **args)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    monkeypatch.setattr(learn, "atomic_write", real)
    finished = learn_tokens(folder, **args)
    assert finished.extra["training"]["steps_done"] == {"0": 6, "1": 6, "2": 6}


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
    before = wide.read_bytes()
    # issue 12, item 2: a bank learn-tokens did not train (here of another width) is not replaced without --overwrite
    with pytest.raises(TokenBankError, match="learn-tokens did not train .*--overwrite"):
        learn_tokens(folder, generator=str(tiny_model), max_steps=2, resolution=32, out=wide, progress=False)
    assert wide.read_bytes() == before
    # nor is a trained bank whose classes this run would drop
    assert main(["learn-tokens", "--data", str(folder), "--generator", str(tiny_model), "--out", str(out),
                 "--max-steps", "3", "--resolution", "32", "--classes", "0", "-q"]) == 2
    assert "classes this run does not learn (e.g. [1])" in capsys.readouterr().err
    assert TokenBank.load(out).tokens == ("<goldfish-0>", "<great white shark-1>")
    assert main(["learn-tokens", "--data", str(folder), "--generator", str(tiny_model), "--out", str(wide),
                 "--max-steps", "2", "--resolution", "32", "--classes", "0", "--overwrite", "-q"]) == 0
    capsys.readouterr()
    assert TokenBank.load(wide).tokens == ("<goldfish-0>",)
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


def _hand_written_reparametrised_adamw(e_init, target, lr, wd, steps, betas=(0.9, 0.999), eps=1e-8):
    """The reference's update written out: row = w·n/‖w‖, loss ‖row − target‖², AdamW on w."""
    n = e_init.norm(dim=1, keepdim=True)
    w, m, v = e_init.clone(), torch.zeros_like(e_init), torch.zeros_like(e_init)
    for t in range(1, steps + 1):
        norm_w = w.norm(dim=1, keepdim=True)
        unit = w / norm_w
        g_row = 2 * (w * n / norm_w - target)
        g = n / norm_w * (g_row - unit * (unit * g_row).sum(1, keepdim=True))  # d row / d w = n/‖w‖ (I − ŵŵᵀ)
        w = w * (1 - lr * wd)  # decoupled weight decay, on w
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        w = w - lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return w


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_reference_step_is_a_reparametrised_adamw_step(wd):
    from dsi_bench.learn import ADAM_BETAS, _optimizer_step, _pin_rows

    gen = torch.Generator().manual_seed(0)
    e_init, target = torch.randn(2, 6, generator=gen), torch.randn(2, 6, generator=gen)
    norms, lr = e_init.norm(dim=1), 0.1
    param = torch.nn.Parameter(e_init.clone())
    views = [torch.nn.Parameter(e_init[r].clone()) for r in range(2)]
    opts = [(torch.optim.AdamW([v], lr=lr, betas=ADAM_BETAS, weight_decay=wd), v) for v in views]
    scalers = [torch.amp.GradScaler("cpu", enabled=False) for _ in range(2)]
    for _ in range(3):
        losses = ((_pin_rows(param, norms) - target) ** 2).sum(1)
        _optimizer_step(param, losses, [0, 1], opts, scalers)
    expected = _hand_written_reparametrised_adamw(e_init, target, lr, wd, 3)
    assert torch.allclose(param.data, expected, atol=1e-6)
    no_decay = _hand_written_reparametrised_adamw(e_init, target, lr, 0.0, 3)
    if wd:  # weight decay acts on w (and so on the direction of the pinned row): not a no-op
        assert (param.data - no_decay).abs().max() > 1e-2
        assert not torch.allclose(_pin_rows(param.data, norms), _pin_rows(no_decay, norms), atol=1e-3)
    assert torch.allclose(_pin_rows(param.data, norms).norm(dim=1), norms, rtol=1e-6)


def test_trainer_decays_the_raw_row_and_saves_the_pinned_one(folder, spec, tmp_path):
    from safetensors.torch import load_file

    from dsi_bench.learn import TokenTrainer, TrainConfig, _pin_rows

    lr, runs = 0.05, {}
    for wd in (0.0, 0.5):
        out = tmp_path / f"wd{wd}.safetensors"
        config = TrainConfig.from_preset("reference", max_steps=1, lr=lr, weight_decay=wd, classes_per_batch=1,
                                           resolution=32)
        trainer = TokenTrainer(folder, config, spec, classes=[0], out=out, progress=False)
        bank = trainer.run()
        runs[wd] = (bank.embedding(0), load_file(out.with_suffix(".state.safetensors"))["raw.0"], trainer.init[0])
    (row0, raw0, init), (row1, raw1, _) = runs[0.0], runs[0.5]
    # step 1 from w = e_init: same gradient, same Adam step; the decay alone separates them, on w
    assert torch.allclose(raw1 - raw0, -lr * 0.5 * init, atol=1e-6)
    assert abs(raw0.norm() - init.norm()) > 1e-3  # w itself is free; only the row used is pinned
    for row, raw in ((row0, raw0), (row1, raw1)):  # the pinned row is what is saved
        assert row.norm().item() == pytest.approx(init.norm().item(), rel=1e-5)
        assert torch.allclose(row, _pin_rows(raw[None], init.norm()[None])[0], atol=1e-7)
    assert not torch.allclose(row0, row1, atol=1e-5)


def test_resume_with_other_settings_is_refused(folder, spec, tmp_path):
    from dsi_bench.errors import TokenBankError

    out = tmp_path / "bank.safetensors"
    args = dict(pipeline=spec, max_steps=3, classes=[0], classes_per_batch=1, resolution=32, out=out, progress=False)
    learn_tokens(folder, lr=0.01, max_steps_this_run=1, **args)
    with pytest.raises(TokenBankError, match="lr: 0.01 there, 0.02 now"):
        learn_tokens(folder, lr=0.02, **args)
    assert learn_tokens(folder, lr=0.01, **args).extra["training"]["steps_done"] == {"0": 3}


def test_defaults_are_the_reference_at_the_native_resolution(folder, spec, monkeypatch, capsys, tiny_model, tmp_path):
    import inspect

    from dsi_bench import learn
    from dsi_bench.cli import main
    from dsi_bench.learn import TrainConfig

    assert TrainConfig().preset == "reference" and TrainConfig().max_steps == 3000 and TrainConfig().lr == 5e-4
    assert inspect.signature(learn_tokens).parameters["preset"].default == "reference"
    asked = []
    real = learn._prepare_images

    def spy(items, resolution):
        asked.append(resolution)
        assert resolution in (32, 72), "the tiny pipeline's native size is 32 px"  # fail fast, not at 512 px
        return real(items, resolution)

    monkeypatch.setattr(learn, "_prepare_images", spy)
    bank = learn_tokens(folder, pipeline=spec, max_steps=1, classes=[0], classes_per_batch=1, progress=False)
    record = bank.extra["training"]
    assert asked == [32] and record["resolution"] == 32 and record["native_resolution"] == 32
    assert record["preset"] == "reference" and record["lr"] == 5e-4 and record["steps"] == 1
    with pytest.raises(SpecError, match=r"resolution=65 px is more than 2x the native 32 px.*--allow-high-resolution"):
        learn_tokens(folder, pipeline=spec, max_steps=1, classes=[0], resolution=65, progress=False)
    forced = learn_tokens(folder, pipeline=spec, max_steps=1, classes=[0], resolution=72, allow_high_resolution=True,
                          progress=False)
    assert forced.extra["training"]["resolution"] == 72 and asked[-1] == 72
    monkeypatch.setattr(learn, "_prepare_images", real)
    out = tmp_path / "cli.safetensors"
    argv = ["learn-tokens", "--data", str(folder), "--generator", str(tiny_model), "--out", str(out), "--max-steps",
            "1", "--classes", "0", "-q"]
    assert main([*argv, "--resolution", "512"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "px" in line]  # (not the loading bars)
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "resolution=512 px" in err[0] and "native 32 px" in err[0] and "--allow-high-resolution" in err[0]
    assert not out.exists()
    assert main(argv) == 0 and "1 steps each, 32 px" in capsys.readouterr().out
    assert TokenBank.load(out).extra["training"]["preset"] == "reference"


def test_fp16_gradients_survive_with_the_scaler(folder, tiny_model, tmp_path, monkeypatch):
    """CPU fp16 autocast and GradScaler("cpu") run the real trainer; a loss scaled by 1e-5 gives gradients
    that underflow in fp16 on the tiny pipeline (1e-8 underflows even at the scaler's initial 2**16)."""
    from safetensors.torch import load_file

    from dsi_bench.learn import TokenTrainer
    from dsi_bench.pipeline import PipelineSpec

    real = TokenTrainer.forward_loss
    monkeypatch.setattr(TokenTrainer, "forward_loss", lambda self, *a: real(self, *a) * 1e-5)

    def first_moment(dtype, name):
        out = tmp_path / f"{name}.safetensors"
        bank = learn_tokens(folder, pipeline=PipelineSpec(model=str(tiny_model), dtype=dtype), max_steps=1, lr=0.05,
                            classes=[0], classes_per_batch=1, resolution=32, out=out, progress=False)
        state = load_file(out.with_suffix(".state.safetensors"))
        return bank, state, state["adam.0.exp_avg"]

    bank, state, fp16 = first_moment("float16", "fp16")
    _, _, fp32 = first_moment("float32", "fp32")
    assert fp16.dtype == torch.float32 and torch.isfinite(fp16).all()
    assert fp32.abs().min() > 0 and (fp16 != 0).all()  # the gradient reached the fp32 row
    assert ((fp16 - fp32).norm() / fp32.norm()) < 0.05  # and is the fp32 run's, up to fp16 rounding
    assert bank.extra["training"]["precision"] == "float16 autocast, fp32 rows and text encoder, GradScaler"
    assert float(state["scaler.0.scale"]) == 2.0**16
    # control: without loss scaling the same gradient is lost (so the test does measure underflow)
    monkeypatch.setattr(TokenTrainer, "scalers", lambda self, group: {
        c: torch.amp.GradScaler("cpu", enabled=False) for c in group})
    assert torch.equal(first_moment("float16", "unscaled")[2], torch.zeros_like(fp32))


def test_images_are_square_cropped_then_resized_like_the_reference(folder):
    from dsi_bench.learn import _prepare_images

    path = folder / "tench" / "0.png"  # 48 wide, 40 high
    pixels, skipped = _prepare_images([path], 24)
    with Image.open(path) as im:
        ref = im.convert("RGB").crop((4, 0, 44, 40)).resize((24, 24), Image.BICUBIC)
    expected = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert skipped == 0 and pixels.shape == (2, 3, 24, 24)
    assert torch.allclose(pixels[0], expected, atol=1e-6) and torch.equal(pixels[1], pixels[0].flip(2))
