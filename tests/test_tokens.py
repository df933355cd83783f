import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from dsi_bench.classes import ClassInfo, imagenet_classes
from dsi_bench.errors import OfflineError, TokenBankError
from dsi_bench.tokens import TokenBank, load_tokens


def _release_folder(root, n=5, dim=1024):
    folder = root / "tokens"
    folder.mkdir(parents=True)
    rows = torch.randn(n, dim)
    for i in range(n):
        torch.save(rows[i].clone(), folder / f"{i}.bin")
    return folder, rows


def test_save_load_round_trip(tmp_path):
    classes = list(imagenet_classes())[:3]
    bank = TokenBank.from_embeddings(torch.randn(3, 16), classes, base_model="m")
    path = bank.save(tmp_path / "bank.safetensors")
    back = TokenBank.load(path)
    assert len(back) == 3 and back.dim == 16 and back.base_model == "m"
    assert back.tokens == ("<tench-0>", "<goldfish-1>", "<great white shark-2>")
    assert torch.equal(back.embeddings, bank.embeddings)
    assert back.fingerprint == bank.fingerprint
    assert [c.name for c in back.class_infos] == ["tench", "goldfish", "great white shark"]
    # the file is one safetensors file keyed by token string
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(bank.tokens)


def test_release_folder_and_zip(tmp_path):
    folder, rows = _release_folder(tmp_path)
    bank = load_tokens(tmp_path)  # the folder holding tokens/
    assert len(bank) == 5 and bank.dim == 1024
    assert torch.equal(bank.embedding(3), rows[3])
    assert bank.token_for(1) == "<goldfish-1>"
    zpath = tmp_path / "tokens.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"tokens/{f.name}")
    zbank = load_tokens(zpath)
    assert zbank.fingerprint == bank.fingerprint


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_release_pickles_are_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "tokens"
    folder.mkdir()
    with open(folder / "0.bin", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(TokenBankError, match="loaded safely"):
        TokenBank.from_release(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_diffusers_files_and_folder(tmp_path):
    a, b = torch.randn(1, 8), torch.randn(8)
    save_file({"<cat-7>": a}, tmp_path / "learned_embeds.safetensors")
    bank = load_tokens(tmp_path / "learned_embeds.safetensors")
    assert bank.class_indices == [7] and bank.token_for(7) == "<cat-7>"
    (tmp_path / "dir" / "0003").mkdir(parents=True)
    torch.save({"dog": b}, tmp_path / "dir" / "0003" / "learned_embeds.bin")
    save_file({"<cat-7>": a}, tmp_path / "dir" / "cat.safetensors")
    bank = load_tokens(tmp_path / "dir")
    assert bank.class_indices == [3, 7]
    assert bank.token_for(3) == "dog" and torch.equal(bank.embedding(3), b)


def test_export_to_diffusers_loads_back(tmp_path):
    bank = TokenBank.from_embeddings(torch.randn(2, 8), list(imagenet_classes())[5:7])
    bank.to_diffusers(tmp_path / "ti")
    assert (tmp_path / "ti" / "0006" / "learned_embeds.safetensors").is_file()
    back = load_tokens(tmp_path / "ti")
    assert back.tokens == bank.tokens and torch.equal(back.embeddings, bank.embeddings)


def test_bank_errors():
    bank = TokenBank.from_embeddings(torch.randn(2, 4), [ClassInfo(0, "a"), ClassInfo(1, "b")])
    with pytest.raises(TokenBankError, match="no token for class 5"):
        bank.token_for(5)
    with pytest.raises(TokenBankError, match="unique"):
        TokenBank(torch.randn(2, 4), [ClassInfo(0, "a"), ClassInfo(1, "b")], ["<x>", "<x>"])
    with pytest.raises(TokenBankError, match="does not exist"):
        load_tokens("no/such/tokens.zip")


def test_hub_tokens_offline_error_names_the_local_option():
    with pytest.raises(OfflineError, match="pass its local path"):
        load_tokens("imagenet-star")


def _pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model)


def test_inject_uses_one_load_textual_inversion_call(tiny_model, tiny_tokens, monkeypatch):
    pipe = _pipe(tiny_model)
    calls = []
    original = type(pipe).load_textual_inversion

    def spy(self, *args, **kwargs):
        calls.append(len(kwargs["token"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "load_textual_inversion", spy)
    bank = TokenBank.load(tiny_tokens)
    n_vocab = len(pipe.tokenizer)
    bank.inject(pipe)
    assert calls == [1000]
    assert len(pipe.tokenizer) == n_vocab + 1000
    ids = pipe.tokenizer("a photo of a <Golden Retriever-207> in the snow", add_special_tokens=False).input_ids
    token_id = pipe.tokenizer.convert_tokens_to_ids("<Golden Retriever-207>")
    assert token_id in ids
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    assert torch.allclose(row, bank.embedding(207))
    bank.inject(pipe)  # idempotent: already-present identical tokens are skipped
    assert calls == [1000]


def test_inject_dimension_mismatch(tiny_model):
    bank = TokenBank.from_embeddings(torch.randn(1, 768), [ClassInfo(0, "a")])
    with pytest.raises(TokenBankError, match="tokens are 768-d but the text encoder of tiny expects 32"):
        bank.inject(_pipe(tiny_model), model_name="tiny")


def test_inject_conflicting_token(tiny_model):
    pipe = _pipe(tiny_model)
    TokenBank(torch.randn(1, 32), [ClassInfo(0, "a")], ["<a>"]).inject(pipe)
    with pytest.raises(TokenBankError, match="different embedding"):
        TokenBank(torch.randn(1, 32), [ClassInfo(0, "a")], ["<a>"]).inject(pipe)


def test_release_style_token_names_stay_single_ids_with_uppercase_and_spaces(tiny_model):
    pipe = _pipe(tiny_model)
    bank = TokenBank.from_embeddings(torch.randn(2, 32), [ClassInfo(207, "Golden Retriever"), ClassInfo(0, "tench")])
    bank.inject(pipe)  # raises if any token splits into several ids
    assert len(pipe.tokenizer("<Golden Retriever-207>", add_special_tokens=False).input_ids) == 1


def test_bank_is_immutable_and_its_fingerprint_is_fixed_at_creation():
    """The fingerprint keys the pipeline and sample caches: a bank that could change would make them stale."""
    bank = TokenBank.from_embeddings(torch.randn(3, 16), list(imagenet_classes())[:3], base_model="m")
    fp = bank.fingerprint
    with pytest.raises(AttributeError, match="immutable"):
        bank.base_model = "other"
    with pytest.raises(AttributeError, match="immutable"):
        bank.tokens = ("a", "b", "c")
    assert not bank.embeddings.requires_grad and isinstance(bank.tokens, tuple)
    other = bank.replace(base_model="other")
    assert other.base_model == "other" and bank.base_model == "m"
    assert other.fingerprint == fp  # same tokens and embeddings
    with pytest.warns(DeprecationWarning, match="class_infos"):
        assert bank.classes == bank.class_infos
