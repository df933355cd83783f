"""Token files and float options (issue 12, items 13, 16, 17): non-finite values, torch.save zips,
tampered bank metadata, and learn-tokens resume when the bank and its training state disagree."""

import hashlib
import json
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dsi_bench.classes import imagenet_classes
from dsi_bench.errors import SpecError, TokenBankError
from dsi_bench.tokens import TokenBank, load_tokens

NAN, INF = float("nan"), float("inf")


def _bank_file(tmp_path, n=3, dim=8):
    bank = TokenBank.from_embeddings(torch.randn(n, dim), imagenet_classes()[:n], base_model="m")
    return bank, bank.save(tmp_path / "bank.safetensors")


def _rewrite(path, tensors=None, meta=None):
    """Rewrite a bank file with other tensors and/or metadata (what a hand edit does)."""
    with safe_open(str(path), "pt") as f:
        old_meta = json.loads(f.metadata()["dsi_bench"])
    save_file(tensors if tensors is not None else load_file(path), path,
              metadata={"dsi_bench": meta if isinstance(meta, str) else json.dumps(meta or old_meta)})
    return old_meta


# ---------------------------------------------------------------------- item 13: non-finite rows
def _nan_in_bank(tmp_path):
    bank, path = _bank_file(tmp_path)
    tensors = load_file(path)
    tensors["<goldfish-1>"][3] = NAN
    tensors["<great white shark-2>"][0] = INF
    _rewrite(path, tensors)
    return path


def _nan_in_diffusers_safetensors(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat-1>": torch.full((1, 8), NAN)}, path)
    return path


def _nan_in_diffusers_bin(tmp_path):
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-1>": torch.tensor([1.0, INF, 0.0])}, path)
    return path


def _nan_in_release_zip(tmp_path):
    path = tmp_path / "tokens.zip"
    rows = torch.randn(3, 8)
    rows[1, 2] = -INF
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            torch.save(rows[i].clone(), tmp_path / f"{i}.bin")
            zf.write(tmp_path / f"{i}.bin", f"tokens/{i}.bin")
    return path


@pytest.mark.parametrize("make, counts, named", [
    (_nan_in_bank, "2 of 3", "1 (<goldfish-1>), 2 (<great white shark-2>)"),
    (_nan_in_diffusers_safetensors, "1 of 1", "1 (<cat-1>)"),
    (_nan_in_diffusers_bin, "1 of 1", "1 (<cat-1>)"),
    (_nan_in_release_zip, "1 of 3", "1 (<goldfish-1>)"),
], ids=["bank", "diffusers safetensors", "diffusers bin", "release zip"])
def test_non_finite_rows_are_refused_naming_the_file_and_classes(tmp_path, make, counts, named):
    path = make(tmp_path)
    expected = f"'{path}': the embeddings of {counts} classes hold NaN or inf values (classes {named})"
    with pytest.raises(TokenBankError, match="^" + re.escape(expected)) as e:
        load_tokens(path)
    assert "\n" not in str(e.value)


def test_a_bank_is_never_built_from_non_finite_rows():
    with pytest.raises(TokenBankError, match="1 of 2 classes hold NaN or inf values \\(classes 1 "):
        TokenBank.from_embeddings(torch.tensor([[1.0, 2.0], [NAN, 0.0]]), imagenet_classes()[:2])


# ---------------------------------------------------------------------- item 13: float options
def test_check_finite_float():
    from dsi_bench.validate import check_finite_float

    assert check_finite_float(2, "x", low=0) == 2.0 and isinstance(check_finite_float(2, "x"), float)
    assert check_finite_float(np.float32(0.5), "x", above=0) == 0.5
    assert check_finite_float(None, "x", optional=True) is None
    for bad in (NAN, INF, -INF, True, "1", None):
        with pytest.raises(SpecError, match="must be a finite number$"):
            check_finite_float(bad, "x")
    with pytest.raises(SpecError, match=r"^lr=0 must be a finite number > 0, e.g. 0.0005$"):
        check_finite_float(0, "lr", above=0, example=5e-4)
    with pytest.raises(SpecError, match=r"^g=-1 must be a finite number >= 0$"):
        check_finite_float(-1, "g", low=0)


@pytest.mark.parametrize("make", [
    lambda v: __import__("dsi_bench.pipeline", fromlist=["x"]).PipelineSpec(guidance_scale=v),
    lambda v: __import__("dsi_bench.learn", fromlist=["x"]).TrainConfig(lr=v),
    lambda v: __import__("dsi_bench.learn", fromlist=["x"]).TrainConfig(weight_decay=v),
], ids=["guidance_scale", "lr", "weight_decay"])
@pytest.mark.parametrize("value", [NAN, INF])
def test_library_float_settings_refuse_nan_and_inf(make, value):
    with pytest.raises(SpecError, match="must be a finite number"):
        make(value)


@pytest.mark.parametrize("argv, flag", [
    (["learn-tokens", "--data", "nowhere", "--out", "t.safetensors", "--lr", "nan"], "--lr"),
    (["learn-tokens", "--data", "nowhere", "--out", "t.safetensors", "--lr", "inf"], "--lr"),
    (["generate", "--out", "o", "--generator", "nowhere", "--tokens", "none", "--guidance-scale", "nan"],
     "--guidance-scale"),
    (["generate", "--out", "o", "--generator", "nowhere", "--tokens", "none", "--guidance-scale", "1e999"],
     "--guidance-scale"),
    (["clip-filter", "nowhere", "--object-threshold", "nan"], "--object-threshold"),
])
def test_cli_float_options_refuse_nan_and_inf_in_one_line(argv, flag, tmp_path, monkeypatch, capsys):
    from dsi_bench.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"{flag}=" in err and "must be a finite number" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- item 16: torch.save zips
@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_a_diffusers_learned_embeds_bin_is_a_diffusers_file_not_a_release_zip(tmp_path, suffix):
    path = tmp_path / f"learned_embeds{suffix}"
    row = torch.randn(8)
    torch.save({"<cat-toy>": row}, path)  # what diffusers' textual-inversion training writes: a zip archive
    assert zipfile.is_zipfile(path)
    bank = load_tokens(path)
    assert bank.tokens == ("<cat-toy>",) and bank.class_infos[0].name == "cat-toy"
    assert torch.equal(bank.embedding(0), row)
    assert TokenBank.load(path).fingerprint == bank.fingerprint


def test_a_pickled_object_in_a_torch_zip_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": torch.randn(8), "x": _Evil()}, path)
    with pytest.raises(TokenBankError, match="not a plain tensor file that can be loaded safely"):
        load_tokens(path)
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


# ---------------------------------------------------------------------- item 17: tampered bank metadata
TAMPERED = {
    "dim disagrees with the tensors": lambda m: {**m, "dim": 1024},
    "class list ids not a list": lambda m: {**m, "class_list": {"names": ["a", "b", "c"], "ids": 5}},
    "classes not a list": lambda m: {**m, "classes": "tench"},
    "class index not an integer": lambda m: {**m, "classes": [{**m["classes"][0], "index": "zero"}, *m["classes"][1:]]},
    "class without a token": lambda m: {**m, "classes": [{"index": 0, "name": "tench"}, *m["classes"][1:]]},
    "fewer classes than tensors": lambda m: {**m, "classes": m["classes"][:2]},
    "format_version not an integer": lambda m: {**m, "format_version": "2"},
    "extra not an object": lambda m: {**m, "extra": [1]},
    "base_model not a string": lambda m: {**m, "base_model": 5},
    "metadata not an object": lambda m: [m],
}


@pytest.mark.parametrize("edit", TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_bank_metadata_is_one_typed_error(tmp_path, edit):
    _, path = _bank_file(tmp_path)
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["dsi_bench"])
    _rewrite(path, meta=json.dumps(edit(meta)))
    with pytest.raises(TokenBankError, match=f"^'{path}' has damaged dsi-bench metadata \\(") as e:
        TokenBank.load(path)
    assert "\n" not in str(e.value)


def test_cli_names_tampered_metadata_in_one_line(tmp_path, capsys):
    from dsi_bench.cli import main

    _, path = _bank_file(tmp_path)
    _rewrite(path, meta=json.dumps({"format": "dsi-bench/token-bank", "classes": [{"index": "0"}]}))
    assert main(["tokens", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged dsi-bench metadata" in err and str(path) in err


# ---------------------------------------------------------------------- item 16: learn-tokens resume
NAMES = ("goldfish", "tench")
TRAIN = dict(max_steps=4, resolution=32, classes_per_batch=2, save_every=1, progress=False)


def _images(root, seed):
    rng = np.random.default_rng(seed)
    for name in NAMES:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return _images(root / "a", 0), _images(root / "b", 1)


@pytest.fixture(scope="module")
def uninterrupted(folders, tiny_model):
    from dsi_bench.learn import learn_tokens
    from dsi_bench.pipeline import PipelineSpec

    return learn_tokens(folders[0], pipeline=PipelineSpec(model=str(tiny_model)), **TRAIN)


def _learn(data, tiny_model, out, **kwargs):
    from dsi_bench.learn import learn_tokens
    from dsi_bench.pipeline import PipelineSpec

    return learn_tokens(data, pipeline=PipelineSpec(model=str(tiny_model)), out=out, **TRAIN, **kwargs)


def _state(out):
    return out.with_suffix(".state.safetensors")


def test_the_bank_records_the_state_saved_with_it(folders, tiny_model, tmp_path):
    out = tmp_path / "bank.safetensors"
    bank = _learn(folders[0], tiny_model, out, max_steps_this_run=2)
    digest = hashlib.sha256(_state(out).read_bytes()).hexdigest()
    assert bank.extra["training"]["state_sha256"] == digest
    assert TokenBank.load(out).extra["training"]["state_sha256"] == digest


@pytest.mark.parametrize("break_state", ["another run's state", "no state"])
def test_resume_restarts_unfinished_classes_whose_state_is_not_the_banks(folders, tiny_model, uninterrupted,
                                                                         tmp_path, caplog, break_state):
    """Chosen: restart (not refuse). The finished classes stay, and the unfinished ones end exactly as an
    uninterrupted run: continuing from other moments and generator states could not."""
    out = tmp_path / "bank.safetensors"
    partial = _learn(folders[0], tiny_model, out, max_steps_this_run=2)
    assert partial.extra["training"]["steps_done"] == {"0": 2, "1": 2}
    if break_state == "no state":
        _state(out).unlink()
    else:  # the same settings on other images: a state that fits the bank's shapes but not its rows
        other = tmp_path / "other.safetensors"
        _learn(folders[1], tiny_model, other, max_steps_this_run=2)
        shutil.copyfile(_state(other), _state(out))
    with caplog.at_level("WARNING", logger="dsi_bench.learn"):
        resumed = _learn(folders[0], tiny_model, out)
    assert torch.allclose(resumed.embeddings, uninterrupted.embeddings, atol=1e-6)
    assert resumed.extra["training"]["steps_done"] == {"0": 4, "1": 4}
    assert "restarting its 2 unfinished classes from step 0 (0, 1)" in caplog.text
