import os

import pytest
import torch
from torch.utils.data import DataLoader

import dsi_bench.synthesis as synthesis
from dsi_bench import pipeline as pl
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import CacheError, ClassSpecError, ShiftError, SpecError, TokenBankError


@pytest.fixture
def make_ds(tiny_spec, tiny_tokens, tmp_path):
    def make(**kwargs):
        args = dict(shift="in the rain", classes="0-2,207", per_class=2, pipeline=tiny_spec, tokens=tiny_tokens,
                    cache_dir=tmp_path / "cache")
        args.update(kwargs)
        return ShiftedImageNet(**args)

    return make


def test_dataset_contract(make_ds):
    ds = make_ds(transform=lambda im: torch.tensor(im.size), target_transform=lambda y: y + 1000)
    assert len(ds) == 8
    assert ds.targets == [0, 0, 1, 1, 2, 2, 207, 207]
    image, label = ds[7]
    assert label == 1207 and image.tolist() == [32, 32]
    assert ds.classes[207] == "Golden Retriever" and ds.class_to_idx["goldfish"] == 1
    with pytest.raises(IndexError):
        ds[8]
    text = repr(ds)
    assert "Number of datapoints: 8" in text
    assert "in_the_rain" in text and "0-2,207" in text and "euler, 2 steps" in text


def test_dataloader_batch_is_one_pipeline_call(make_ds, monkeypatch):
    ds = make_ds(cache_dir=False)
    calls = []
    original = synthesis.Synthesizer.generate

    def spy(self, requests, progress=None):
        calls.append(len(requests))
        return original(self, requests, progress)

    monkeypatch.setattr(synthesis.Synthesizer, "generate", spy)
    batches = list(DataLoader(ds, batch_size=4, collate_fn=lambda b: b))
    assert calls == [4, 4]
    assert [len(b) for b in batches] == [4, 4]


def test_warm_cache_serves_without_loading_the_pipeline(make_ds, monkeypatch):
    ds = make_ds(transform=lambda im: torch.from_numpy(__import__("numpy").asarray(im).copy()))
    first = [x for x, _ in DataLoader(ds, batch_size=3)]
    pl.clear_pipeline_cache()

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline must not be loaded on a warm cache")

    monkeypatch.setattr(synthesis, "load_pipeline", refuse)
    again = make_ds(transform=ds.transform)  # a fresh dataset object, same settings
    second = [x for x, _ in DataLoader(again, batch_size=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert again.synthesizer.cache.hits == len(ds)


def test_corrupt_cache_entry_is_regenerated_not_returned(make_ds):
    ds = make_ds(classes=[0], per_class=1)
    image, _ = ds[0]
    path = ds.synthesizer.cache.path(ds.synthesizer.cache_key(ds.request(0)))
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF  # damage the pixel data
    path.write_bytes(bytes(data))
    again, _ = ds[0]
    assert again.tobytes() == image.tobytes()
    path.write_bytes(b"not a png")
    assert ds[0][0].tobytes() == image.tobytes()
    assert ds.synthesizer.cache.get(ds.synthesizer.cache_key(ds.request(0))) is not None  # healed


def test_settings_that_change_pixels_change_the_cache_key(make_ds):
    ds = make_ds()
    key = ds.synthesizer.cache_key(ds.request(0))
    for change in ({"steps": 3}, {"seed": 1}, {"shift": "at night"}, {"sampler": "ddim"}, {"batch_size": 2}):
        other = make_ds(**change)
        assert other.synthesizer.cache_key(other.request(0)) != key, change


def test_workers_on_cpu(make_ds):
    """num_workers > 0 on CPU: every sample exactly once, in order, with the right label."""
    import numpy as np

    ds = make_ds(cache_dir=False)
    to_array = lambda batch: [(np.asarray(x, dtype=np.int16), y) for x, y in batch]  # noqa: E731
    serial = [s for b in DataLoader(ds, batch_size=4, collate_fn=to_array) for s in b]
    parallel = [s for b in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=to_array) for s in b]
    assert [y for _, y in parallel] == [y for _, y in serial] == ds.targets
    # Workers run torch with one thread; CPU kernels may round the last bit differently
    # with another thread count (documented), never more than one 8-bit level here.
    diff = max(int(np.abs(a - b).max()) for (a, _), (b, _) in zip(serial, parallel))
    assert diff <= 1


def test_cuda_in_forked_workers_gets_a_clear_error(tiny_spec, monkeypatch):
    import torch.utils.data

    class Info:
        num_workers = 2

    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: Info())
    monkeypatch.setattr(pl.multiprocessing, "get_start_method", lambda allow_none=False: "fork")
    with pytest.raises(SpecError, match="num_workers=0"):
        pl.load_pipeline(tiny_spec.replace(device="cuda"))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"shift": "in the rian"}, ShiftError, "Did you mean"),
    ({"shift": "a photo of a <CLASS>"}, ShiftError, "no <TOKEN>"),
    ({"classes": "998-1000"}, ClassSpecError, "class index 1000 is out of range"),
    ({"per_class": 0}, SpecError, "per_class=0"),
    ({"source": "zip"}, SpecError, "unknown source 'zip'"),
    ({"device": "tpu9"}, SpecError, "not a torch device"),
])
def test_bad_arguments_fail_up_front(make_ds, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_ds(**kwargs)


def test_token_bank_missing_a_class(make_ds, tmp_path):
    from dsi_bench.testing import save_tiny_tokens

    small = save_tiny_tokens(tmp_path / "small.safetensors", num_classes=10)
    with pytest.raises(TokenBankError, match="no token for class 207"):
        make_ds(tokens=small)


def test_embedding_dimension_mismatch(make_ds, tmp_path):
    from dsi_bench.testing import save_tiny_tokens

    wide = save_tiny_tokens(tmp_path / "wide.safetensors", num_classes=300, dim=1024)
    with pytest.raises(TokenBankError, match="tokens are 1024-d but the text encoder of .* expects 32"):
        make_ds(tokens=wide, cache_dir=False)  # up front, from the model's config


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_dir_nonroot(make_ds, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(CacheError, match="not writable"):
        make_ds(cache_dir=ro / "cache")


def test_unwritable_cache_dir(make_ds, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="not writable"):
        make_ds(cache_dir=blocker / "cache")


def test_custom_dataset_classes_and_tokens(tiny_spec, tmp_path):
    from dsi_bench.classes import ClassList
    from dsi_bench.tokens import TokenBank

    classes = ClassList.from_names(["apple", "pear", "plum"], name="fruit")
    bank = TokenBank.from_embeddings(torch.randn(3, 32) * 0.3, list(classes), base_model="tiny")
    path = bank.save(tmp_path / "fruit.safetensors")
    ds = ShiftedImageNet("on the road", classes="pear,2", per_class=1, pipeline=tiny_spec, tokens=path,
                         class_list=classes, cache_dir=False)
    assert ds.targets == [1, 2] and ds.classes == ["apple", "pear", "plum"]
    assert ds.metadata(0)["prompt"] == "a photo of a <pear-1> on the road"
    assert ds[1][1] == 2


def test_channels_last_spec_generates(make_ds, tiny_spec):
    ds = make_ds(pipeline=tiny_spec.replace(channels_last=True), classes=[0], per_class=1, cache_dir=False)
    image, label = ds[0]
    assert image.size == (32, 32) and label == 0
