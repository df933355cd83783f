"""Hugging Face datasets: export in both formats, load back with `datasets`, the card, publishing, bad input."""

import json
import shutil

import numpy as np
import pytest
import yaml

from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.errors import OfflineError, ShardError, SpecError
from dsi_bench.hub import check_repo_id, export_dataset, publish
from dsi_bench.shards import ShardSet

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model, tiny_tokens):
    from dsi_bench.build import build_shards
    from dsi_bench.pipeline import PipelineSpec

    out = tmp_path_factory.mktemp("hub") / "shards"
    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    build_shards(out, pipeline=spec, tokens=tiny_tokens, shifts=["base", "in the snow"], classes="0-1,207",
                 per_class=3, samples_per_shard=4, image_format="png", progress=False)
    return out


@pytest.fixture(scope="module", params=["webdataset", "parquet"])
def export(request, shards, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"export-{request.param}")
    result = export_dataset(shards, out, dataset_format=request.param, repo="my-lab/tiny-shifts")
    return request.param, out, result


def test_export_layout_and_card(export, shards):
    fmt, out, result = export
    ext = "tar" if fmt == "webdataset" else "parquet"
    assert sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob(f"*.{ext}")) == [
        f"data/{s}/{s}-{k:06d}.{ext}" for s in ("base", "in_the_snow") for k in range(3)]
    assert json.loads((out / "manifest.json").read_text()) == ShardSet(shards).manifest
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    card = yaml.safe_load(front)
    assert [c["config_name"] for c in card["configs"]] == ["base", "in_the_snow"]
    assert card["configs"][1]["data_files"] == [{"split": "test", "path": f"data/in_the_snow/*.{ext}"}]
    assert card["license"] == "other" and "image-classification" in card["task_categories"]
    info = {i["config_name"]: i for i in card["dataset_info"]}
    assert info["in_the_snow"]["splits"][0]["num_examples"] == 9
    assert "| guidance scale | 7.5 |" in body and "2 steps" in body and "@article{vendrow2023dataset" in body
    assert "a photo of a <TOKEN> in the snow" in body and "| in_the_snow | 9 |" in body
    assert result["shifts"] == {"base": 9, "in_the_snow": 9}


def test_load_dataset_returns_our_samples(export, shards):
    import datasets

    fmt, out, _ = export
    assert datasets.get_dataset_config_names(str(out)) == ["base", "in_the_snow"]
    ds = datasets.load_dataset(str(out), name="in_the_snow", split="test")
    key, label, image = ("__key__", "cls", "png") if fmt == "webdataset" else ("key", "label", "image")
    names = ds.features[label].names
    assert isinstance(ds.features[label], datasets.ClassLabel) and names[207] == "Golden Retriever"
    assert names[657] == "missile (657)" and names[744] == "missile (744)"  # ClassLabel needs unique names
    ours = ShiftedImageNet("in_the_snow", source="shards", root=shards)
    assert ds[key] == ours.keys and ds[label] == ours.targets
    for i in (0, 8):
        assert np.array_equal(np.asarray(ds[i][image].convert("RGB")), np.asarray(ours[i][0]))
    streamed = list(datasets.load_dataset(str(out), name="base", split="test", streaming=True))
    assert [r[key] for r in streamed] == ShiftedImageNet("base", source="shards", root=shards).keys
    hub = ShiftedImageNet("in_the_snow", source="hub", root=out)
    assert hub.keys == ours.keys and hub.targets == ours.targets
    assert np.array_equal(np.asarray(hub[5][0]), np.asarray(ours[5][0]))
    assert hub.metadata(5)["key"] == ours.keys[5]


def test_raw_shards_load_with_the_webdataset_builder(shards):
    import datasets

    files = sorted(str(p) for p in (shards / "base").glob("*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"test": files}, split="test")
    assert ds["__key__"] == ShiftedImageNet("base", source="shards", root=shards).keys
    assert ds[0]["json"]["prompt"].startswith("a photo of a <tench-0>")


def test_evaluating_from_the_hub_matches_the_shards(export, shards):
    from dsi_bench.evaluate import evaluate
    from dsi_bench.testing import tiny_classifier

    _, out, _ = export
    module, transform = tiny_classifier()
    a = evaluate(module, {"source": "shards", "root": shards}, transform=transform, progress=False, num_workers=0)
    b = evaluate(module, {"source": "hub", "root": out}, transform=transform, progress=False, num_workers=0)
    strip = lambda r: {s: {k: v for k, v in m.items() if k != "fingerprint"} for s, m in r.shifts.items()}  # noqa
    assert strip(a) == strip(b) and a["data"]["fingerprint"] == b["data"]["fingerprint"]


def test_publish_dry_run_and_upload_boundary(shards, tmp_path, monkeypatch, capsys):
    from dsi_bench.cli import main

    assert main(["publish", str(shards), "--repo", "my-lab/tiny", "--dry-run", str(tmp_path / "staged"), "-q"]) == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    assert (tmp_path / "staged" / "README.md").is_file()
    # Offline mode: a clear error that suggests --dry-run.
    with pytest.raises(OfflineError, match="--dry-run OUT_DIR"):
        publish(shards, "my-lab/tiny", token=FAKE_TOKEN)
    # Online mode against an unreachable endpoint, with a fake token: the same error, no token in it.
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(OfflineError) as info:
        publish(shards, "my-lab/tiny", token=FAKE_TOKEN, endpoint="http://127.0.0.1:9")
    assert "--dry-run" in str(info.value) and FAKE_TOKEN not in str(info.value)
    assert main(["publish", str(shards), "--repo", "my-lab/tiny", "--endpoint", "http://127.0.0.1:9", "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub" in err and len(err.strip().splitlines()) == 1


def test_publish_uploads_through_the_client(shards, monkeypatch):
    """Everything up to the HTTP layer: plan check, repo creation, folder upload (recorded, not sent)."""
    import huggingface_hub

    import dsi_bench.hub as hub

    calls = []
    monkeypatch.setattr(hub, "_probe", lambda api: None)
    monkeypatch.setattr(hub, "_remote_plan_hash", lambda api, repo: "a-different-plan")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo, **kw: calls.append(("create", repo, kw["private"])))

    def upload_folder(self, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in folder_path.iterdir())))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    with pytest.raises(ShardError, match="already holds a dataset of another plan.*--force"):
        publish(shards, "my-lab/tiny", token=FAKE_TOKEN)
    result = publish(shards, "my-lab/tiny", token=FAKE_TOKEN, force=True, private=True)
    assert calls == [("create", "my-lab/tiny", True), ("upload", "my-lab/tiny", ["README.md", "data",
                                                                                 "manifest.json"])]
    assert result["uploaded"] and result["url"].endswith("/datasets/my-lab/tiny")


def test_bad_input(shards, tmp_path):
    for bad in ("no-slash", "a/b/c", "user/na me", "-user/name", "user/name.git"):
        with pytest.raises(SpecError, match="USER/NAME"):
            check_repo_id(bad)
    with pytest.raises(ShardError, match="no manifest.json"):
        export_dataset(tmp_path, tmp_path / "out")
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    victim = copy / "in_the_snow" / "in_the_snow-000001.tar"
    data = bytearray(victim.read_bytes())
    data[3000] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="refusing to publish: shard in_the_snow/in_the_snow-000001.tar"):
        export_dataset(copy, tmp_path / "out2")
    with pytest.raises(SpecError, match="format 'zip'"):
        export_dataset(shards, tmp_path / "out3", dataset_format="zip")

    from dsi_bench.build import ShardJob, ShardTask, run_job

    class Empty(ShardJob):
        plan = {"kind": "test"}

        def tasks(self):
            return [ShardTask("base", 0, ())]

        def samples(self, task):
            return iter(())

    run_job(Empty(), tmp_path / "empty", progress=False)
    with pytest.raises(ShardError, match="shift\\(s\\) base have no samples"):
        export_dataset(tmp_path / "empty", tmp_path / "out4")


def test_publish_never_deletes_a_source_or_leaves_its_folders(shards, tmp_path, capsys):
    """Issue 12, item 1: `publish --dry-run` deleted the shards it was staging when the export folder held them,
    and followed absolute or `..` paths from the manifest out of both folders."""
    import hashlib

    from dsi_bench.cli import main

    pub = tmp_path / "pub"
    shutil.copytree(shards, pub / "data")
    tars = sorted((pub / "data").rglob("*.tar"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tars}
    assert main(["publish", str(pub / "data"), "--repo", "me/x", "--dry-run", str(pub), "-q"]) == 0
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tars} == before  # every source shard intact

    outside = tmp_path / "outside.tar"
    outside.write_bytes(b"a user's file")
    for bad in (str(outside), "../../outside.tar", "base/../../outside.tar"):
        edited = tmp_path / f"edited-{abs(hash(bad))}"
        shutil.copytree(shards, edited)
        manifest = json.loads((edited / "manifest.json").read_text())
        manifest["shards"][0]["path"] = bad
        (edited / "manifest.json").write_text(json.dumps(manifest))
        staged = tmp_path / f"staged-{abs(hash(bad))}"
        assert main(["publish", str(edited), "--repo", "me/x", "--dry-run", str(staged), "-q"]) == 2
        err = capsys.readouterr().err
        assert repr(bad) in err and "refusing" in err, err
        assert outside.read_bytes() == b"a user's file"
        assert not staged.exists()
        with pytest.raises(ShardError, match="refusing to read"):
            ShardSet(edited)
