"""Issue 11, items 5 and 6: class lists travel with token banks, and ImageNet-style folders are ImageNet.

A bank learned on your own dataset records its classes; generation, datasets, builds, evaluation,
scoring and publishing take labels and names from it (never ImageNet's "tench" for class 0).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dsi_bench.classes import ClassList, imagenet_classes
from dsi_bench.errors import ClassSpecError, TokenBankError
from dsi_bench.tokens import TokenBank, bank_class_list, load_tokens

TOYS = ["red panda toy", "blue mug", "tench"]  # 'tench' on purpose: index 2 here, 0 in ImageNet


@pytest.fixture(scope="module")
def toys() -> ClassList:
    return ClassList.from_names(TOYS, ids=["toy-rp", "mug-b", "fish-t"], name="my-toys")


@pytest.fixture(scope="module")
def my_bank(tmp_path_factory, toys):
    """A bank of the tiny model's width for all three classes of a custom dataset."""
    emb = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    bank = TokenBank.from_embeddings(emb / emb.norm(dim=1, keepdim=True) * 0.4, toys, base_model="tiny")
    return bank.save(tmp_path_factory.mktemp("bank") / "my_bank.safetensors")


@pytest.fixture
def spec(tiny_model):
    from dsi_bench.pipeline import PipelineSpec

    return PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)


# ---------------------------------------------------------------------- the bank's record
def test_bank_records_its_class_list_and_reads_it_back(my_bank, toys):
    bank = TokenBank.load(my_bank)
    assert bank.class_list == toys and bank.class_list.name == "my-toys"
    assert bank.class_list.ids == ["toy-rp", "mug-b", "fish-t"]
    assert bank.custom_class_list == toys and bank_class_list(my_bank) == toys
    assert bank.tokens == ("<red panda toy-0>", "<blue mug-1>", "<tench-2>")
    assert bank.subset([1]).class_list == toys  # a part of a bank still knows the whole label space
    with pytest.raises(TokenBankError, match="does not match its class list"):
        TokenBank(torch.zeros(1, 4), [toys[0]], class_list=ClassList.from_names(["other"]))


def test_older_banks_without_a_class_list_load_as_before(my_bank, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(my_bank), "pt") as f:
        meta = json.loads(f.metadata()["dsi_bench"])
    del meta["class_list"]  # what banks written before the class list was recorded hold
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(my_bank)), str(old), metadata={"dsi_bench": json.dumps(meta)})
    bank = TokenBank.load(old)
    assert bank.class_list is None and bank_class_list(old) is None
    assert bank.tokens == TokenBank.load(my_bank).tokens and bank.fingerprint == TokenBank.load(my_bank).fingerprint


def test_imagenet_banks_keep_the_imagenet_label_space(tiny_tokens, tmp_path):
    from dsi_bench.testing import FAKE_WNIDS

    release = tmp_path / "tokens"
    release.mkdir()
    for i in range(2):
        torch.save(torch.randn(32), release / f"{i}.bin")
    bank = load_tokens(release)
    assert bank.class_list.is_imagenet and bank.custom_class_list is None
    assert bank.tokens == ("<tench-0>", "<goldfish-1>")
    assert bank_class_list(tiny_tokens) is None and bank_class_list("imagenet-star") is None
    assert FAKE_WNIDS[0] == imagenet_classes()[0].wnid


# ---------------------------------------------------------------------- generate and the dataset
def test_generate_labels_and_names_images_by_the_banks_classes(tiny_model, my_bank, tmp_path, capsys):
    from dsi_bench.cli import main

    out = tmp_path / "out"
    args = ["generate", "--generator", str(tiny_model), "--tokens", str(my_bank), "--per-class", "1",
            "--batch-size", "4", "--steps", "2", "--out-size", "0", "--out", str(out), "--quiet", "--no-cache"]
    assert main([*args, "--classes", "0-1"]) == 0
    rows = [json.loads(x) for x in (out / "base" / "metadata.jsonl").read_text().splitlines()]
    assert [(r["class_index"], r["class_name"], r["wnid"]) for r in rows] == [(0, "red panda toy", "toy-rp"),
                                                                           (1, "blue mug", "mug-b")]
    assert rows[0]["prompt"] == "a photo of a <red panda toy-0>"
    # class names (and ids) of the bank's list resolve; ImageNet's do not
    assert main([*args, "--classes", "red panda toy,fish-t", "--out", str(tmp_path / "named")]) == 0
    named = sorted(p.relative_to(tmp_path / "named").as_posix() for p in (tmp_path / "named").rglob("*.png"))
    assert named == ["base/0000/00.png", "base/0002/00.png"]
    capsys.readouterr()
    assert main([*args, "--classes", "goldfish", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown class 'goldfish' in my-toys" in capsys.readouterr().err


def test_the_dataset_follows_the_bank(my_bank, spec, toys):
    from dsi_bench import ShiftedDataset, ShiftedImageNet
    from dsi_bench.datasets import label_space

    ds = ShiftedDataset("in the snow", classes="blue mug", per_class=2, pipeline=spec, tokens=my_bank,
                        cache_dir=False)
    assert ds.classes == TOYS and ds.class_to_idx == {"red panda toy": 0, "blue mug": 1, "tench": 2}
    assert ds.targets == [1, 1] and ds.class_list == toys
    meta = ds.metadata(0)
    assert meta["class_name"] == "blue mug" and meta["prompt"] == "a photo of a <blue mug-1> in the snow"
    assert "Classes: 1 of 3" in repr(ds) and repr(ds).startswith("Dataset ShiftedDataset")
    assert isinstance(ShiftedImageNet("base", classes="tench", per_class=1, pipeline=spec, tokens=my_bank,
                                      cache_dir=False), ShiftedDataset)
    assert label_space({"tokens": str(my_bank)}) == toys and label_space({}).is_imagenet
    with pytest.raises(ClassSpecError, match="contradicts the class list the token bank records"):
        ShiftedDataset("base", classes="0", pipeline=spec, tokens=my_bank, class_list=imagenet_classes())


# ---------------------------------------------------------------------- build, eval, score, publish
def test_build_eval_score_and_publish_carry_the_banks_classes(my_bank, spec, toys, tmp_path):
    from dsi_bench import ShiftedDataset, build_shards, score_predictions
    from dsi_bench.evaluate import evaluate  # dsi_bench.evaluate is also the module's name
    from dsi_bench.hub import export_dataset
    from dsi_bench.sources.hub import HubSource
    from dsi_bench.testing import tiny_classifier

    shards = tmp_path / "shards"
    build_shards(shards, pipeline=spec, tokens=my_bank, shifts=["base", "in the snow"], classes="red panda toy,2",
                 per_class=2, image_format="png", samples_per_shard=4, progress=False)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["plan"]["class_list"]["names"] == TOYS
    ds = ShiftedDataset("in_the_snow", source="shards", root=shards)
    assert ds.class_list == toys and ds.targets == [0, 0, 2, 2] and ds.classes[2] == "tench"

    module, transform = tiny_classifier(num_classes=3)
    preds = tmp_path / "preds.csv"
    results = evaluate(module, {"source": "shards", "root": str(shards)}, transform=transform, progress=False,
                       num_workers=0, predictions=preds)
    assert results["label_space"] == {"name": "my-toys", "num_classes": 3}
    names = {w["name"] for w in results.shifts["in_the_snow"]["worst_classes"]}
    assert names and names <= {"red panda toy", "tench"}
    scored = score_predictions(preds, {"source": "shards", "root": str(shards)})
    assert scored["label_space"] == {"name": "my-toys", "num_classes": 3}
    assert scored.shifts["in_the_snow"]["top1"] == results.shifts["in_the_snow"]["top1"]

    export = tmp_path / "export"
    export_dataset(shards, export, dataset_format="parquet")
    card = (export / "README.md").read_text()
    assert "red panda toy" in card and "goldfish" not in card
    assert HubSource.recorded_class_list(export) == toys


# ---------------------------------------------------------------------- item 5: ImageNet-style folders
def test_imagenet_style_folders_use_the_class_table(tiny_model, tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    from dsi_bench.learn import learn_tokens, load_training_data
    from dsi_bench.pipeline import PipelineSpec

    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01514668"):  # tench (0), rooster (7)
        folder = tmp_path / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_training_data(tmp_path / "train")
    assert sorted(data.items) == [0, 7] and data.class_list[7].name == "rooster" and data.class_list.is_imagenet
    bank = learn_tokens(tmp_path / "train", pipeline=PipelineSpec(model=str(tiny_model)), max_steps=1, resolution=32,
                        progress=False)
    assert bank.tokens == ("<tench-0>", "<rooster-7>") and bank.class_indices == [0, 7]
    assert bank.custom_class_list is None  # an ImageNet bank: consumers keep the ImageNet label space
    # each token starts from (and keeps the norm of) its common name's word pieces, not the WordNet id's
    tok = CLIPTokenizer.from_pretrained(tiny_model / "tokenizer")
    table = CLIPTextModel.from_pretrained(tiny_model / "text_encoder").get_input_embeddings().weight
    for c, name, wnid in ((0, "tench", "n01440764"), (7, "rooster", "n01514668")):
        norm = table[tok(name, add_special_tokens=False).input_ids].mean(0).norm().item()
        wrong = table[tok(wnid, add_special_tokens=False).input_ids].mean(0).norm().item()
        assert bank.embedding(c).norm().item() == pytest.approx(norm, rel=1e-4)
        assert abs(norm - wrong) > 1e-3
    assert load_training_data(tmp_path / "train", classes="rooster").items.keys() == {7}
