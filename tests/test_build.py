"""The shard builder: plan, bytes, resume, engines, verify."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dsi_bench.build import build_shards
from dsi_bench.errors import ShardError, SpecError
from dsi_bench.shards import MANIFEST, verify_shards

ARGS = dict(shifts=["base", "in the snow"], classes="0-2", per_class=3, samples_per_shard=4, image_format="png",
            cpu_threads=1, progress=False)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every shard and the manifest, by relative path (build bookkeeping excluded)."""
    files = [root / MANIFEST, *sorted(root.glob("*/*.tar"))]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, tiny_tokens):
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    out = tmp_path_factory.mktemp("ref") / "shards"
    summary = build_shards(out, pipeline=spec, tokens=tiny_tokens, **ARGS)
    return out, summary, spec


def test_layout_manifest_and_samples(reference):
    out, summary, _ = reference
    assert summary.complete and summary.shards_built == 6 and summary.samples_built == 18
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "dsi-bench/shards" and manifest["package_version"]
    assert [r["path"] for r in manifest["shards"]][:3] == [
        "base/base-000000.tar", "base/base-000001.tar", "base/base-000002.tar"]
    assert [r["samples"] for r in manifest["shards"]] == [4, 4, 1, 4, 4, 1]
    assert manifest["shifts"]["in_the_snow"]["samples"] == 9
    plan = manifest["plan"]
    assert plan["classes"] == [0, 1, 2] and plan["per_class"] == 3 and plan["cpu_threads"] == 1
    assert plan["pixel_settings"]["steps"] == 2 and plan["model_fingerprint"].startswith("sha256:")
    with tarfile.open(out / "in_the_snow" / "in_the_snow-000001.tar") as tf:
        names = tf.getnames()
        assert names[:3] == ["in_the_snow/0001/01.cls", "in_the_snow/0001/01.json", "in_the_snow/0001/01.png"]
        meta = json.loads(tf.extractfile("in_the_snow/0001/01.json").read())
        assert tf.extractfile("in_the_snow/0001/01.cls").read() == b"1"
        assert {m.mtime for m in tf.getmembers()} == {0}
    assert meta["key"] == "in_the_snow/0001/01" and meta["prompt"].endswith("in the snow")
    assert meta["image_format"] == "png" and meta["torch_threads"] == 1
    assert not list(out.glob("*/.*.tmp"))


def test_rerun_skips_everything_and_changes_nothing(reference, tiny_tokens):
    out, _, spec = reference
    before = tree_bytes(out)
    again = build_shards(out, pipeline=spec, tokens=tiny_tokens, **ARGS)
    assert again.shards_built == 0 and again.shards_skipped == 6 and again.complete
    assert tree_bytes(out) == before


def test_damaged_and_partial_shards_are_rebuilt_identically(reference, tiny_tokens, tmp_path):
    import shutil

    out, _, spec = reference
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = tree_bytes(copy)
    victim = copy / "base" / "base-000001.tar"
    data = bytearray(victim.read_bytes())
    data[2000] ^= 1
    victim.write_bytes(bytes(data))
    (copy / "in_the_snow" / "in_the_snow-000002.tar").write_bytes(b"cut short")
    (copy / "base" / ".base-000000.tar.999999.tmp").write_bytes(b"left by a killed worker")
    (copy / MANIFEST).unlink()
    summary = build_shards(copy, pipeline=spec, tokens=tiny_tokens, **ARGS)
    assert summary.shards_built == 2 and summary.shards_skipped == 4
    assert tree_bytes(copy) == before
    assert not list(copy.glob("*/.*.tmp"))


def test_another_plan_is_refused_then_overwritten(reference, tiny_tokens, tmp_path):
    import shutil

    out, _, spec = reference
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    args = {**ARGS, "per_class": 2}
    with pytest.raises(ShardError, match="another plan .*per_class"):
        build_shards(copy, pipeline=spec, tokens=tiny_tokens, **args)
    # issue 12, item 3: --overwrite removed every .tar one level down, the user's too
    (copy / "base" / "mine.tar").write_bytes(b"a user's tar")
    (copy / "notes").mkdir()
    (copy / "notes" / "old.tar").write_bytes(b"another")
    summary = build_shards(copy, pipeline=spec, tokens=tiny_tokens, overwrite=True, **args)
    assert summary.complete and summary.manifest["samples"] == 12
    assert sorted(p.name for p in (copy / "base").glob("*.tar")) == ["base-000000.tar", "base-000001.tar", "mine.tar"]
    assert (copy / "base" / "mine.tar").read_bytes() == b"a user's tar"
    assert (copy / "notes" / "old.tar").read_bytes() == b"another"
    assert not (copy / "in_the_snow" / "in_the_snow-000002.tar").exists()  # the old plan's extra shard is gone


def test_verify_names_a_flipped_byte_and_a_truncated_shard(reference, tmp_path):
    import shutil

    out, _, _ = reference
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert verify_shards(copy).ok
    flipped = copy / "base" / "base-000000.tar"
    data = bytearray(flipped.read_bytes())
    data[3500] ^= 0x10
    flipped.write_bytes(bytes(data))
    truncated = copy / "in_the_snow" / "in_the_snow-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    (copy / "in_the_snow" / "in_the_snow-000002.tar").unlink()
    report = verify_shards(copy)
    assert not report.ok and report.checked == 6
    assert set(report.problems) == {"base/base-000000.tar", "in_the_snow/in_the_snow-000001.tar",
                                    "in_the_snow/in_the_snow-000002.tar"}
    assert "sha256" in report.problems["base/base-000000.tar"]
    assert "truncated" in report.problems["in_the_snow/in_the_snow-000001.tar"]
    assert report.problems["in_the_snow/in_the_snow-000002.tar"] == "missing"
    assert "base/base-000000.tar" in str(report)


def test_verify_decodes_images(reference, tmp_path):
    """A shard whose record matches but whose image is not an image (a rebuilt manifest) is caught."""
    from dsi_bench.build import ShardJob, ShardTask, run_job

    class BadJob(ShardJob):
        plan = {"kind": "test"}

        def tasks(self):
            return [ShardTask("base", 0, (1,))]

        def samples(self, task):
            yield {"__key__": "base/0000/00", "png": b"\x89PNG not really", "cls": b"0", "json": b"{}"}

    run_job(BadJob(), tmp_path / "bad", progress=False)
    report = verify_shards(tmp_path / "bad")
    assert "does not decode" in report.problems["base/base-000000.tar"]
    assert verify_shards(tmp_path / "bad", decode=False).ok


def test_bad_arguments(tiny_spec, tiny_tokens, tmp_path):
    with pytest.raises(SpecError, match="image format 'gif'"):
        build_shards(tmp_path, pipeline=tiny_spec, tokens=tiny_tokens, image_format="gif")
    with pytest.raises(SpecError, match="samples_per_shard=0"):
        build_shards(tmp_path, pipeline=tiny_spec, tokens=tiny_tokens, samples_per_shard=0)
    with pytest.raises(SpecError, match="unknown engine 'spark'"):
        build_shards(tmp_path, pipeline=tiny_spec, tokens=tiny_tokens, classes="0", per_class=1, engine="spark")
    with pytest.raises(SpecError, match="same shift twice"):
        build_shards(tmp_path, pipeline=tiny_spec, tokens=tiny_tokens, shifts=["in the snow", "in_the_snow"])
    with pytest.raises(SpecError, match="RANK and WORLD_SIZE"):
        build_shards(tmp_path / "t", pipeline=tiny_spec, tokens=tiny_tokens, classes="0", per_class=1,
                     engine="torchrun")


def _cli_build(out: Path, tiny_model: Path, tiny_tokens: Path, extra=()) -> list[str]:
    return ["build", "--generator", str(tiny_model), "--tokens", str(tiny_tokens), "--shifts", "base,in_the_snow",
            "--classes", "0-2", "--per-class", "3", "--samples-per-shard", "4", "--image-format", "png", "--steps", "2",
            "--batch-size", "4", "--out-size", "0", "--cpu-threads", "1", "--out", str(out), "-q", *extra]


def test_resume_after_kill_9_is_byte_identical(reference, tiny_model, tiny_tokens, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dsi_bench.cli", *_cli_build(out, tiny_model, tiny_tokens, ["--batch-size", "1"])]
    # Batch 1 (a different plan than the reference's batch 4) makes shards slow enough to be caught mid-write.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".build" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("*.json")))
    assert 0 < done < 6, f"the kill should land mid-build (got {done} of 6 shards)"
    assert not (out / MANIFEST).exists()
    from dsi_bench.cli import main

    assert main(_cli_build(out, tiny_model, tiny_tokens, ["--batch-size", "1"])) == 0
    resumed = tree_bytes(out)
    fresh = tmp_path / "fresh"
    assert main(_cli_build(fresh, tiny_model, tiny_tokens, ["--batch-size", "1"])) == 0
    assert resumed == tree_bytes(fresh)
    assert verify_shards(out).ok


def test_torchrun_two_ranks_equal_one_process(reference, tiny_model, tiny_tokens, tmp_path):
    out = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
           "-m", "dsi_bench.cli", *_cli_build(out, tiny_model, tiny_tokens, ["--engine", "torchrun"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree_bytes(out) == tree_bytes(reference[0])


def test_local_processes_equal_one_process(reference, tiny_tokens, tmp_path):
    out = tmp_path / "procs"
    summary = build_shards(out, pipeline=reference[2], tokens=tiny_tokens, devices=["cpu", "cpu"], **ARGS)
    assert summary.complete and summary.shards_built == 6
    assert tree_bytes(out) == tree_bytes(reference[0])


def test_ray_engine_equals_one_process(reference, tiny_tokens, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = build_shards(out, pipeline=reference[2], tokens=tiny_tokens, engine="ray", **ARGS)
    finally:
        ray.shutdown()
    assert summary.complete and summary.shards_built == 6
    assert tree_bytes(out) == tree_bytes(reference[0])


def test_torchrun_ranks_get_their_own_gpu():
    from types import SimpleNamespace

    from dsi_bench.build import SynthesisJob
    from dsi_bench.pipeline import PipelineSpec

    assert SynthesisJob.rank_device(SimpleNamespace(spec=PipelineSpec(device="cuda")), 3) == "cuda:3"
    assert SynthesisJob.rank_device(SimpleNamespace(spec=PipelineSpec(device="cuda:1")), 3) is None
    assert SynthesisJob.rank_device(SimpleNamespace(spec=PipelineSpec(device="cpu")), 1) is None
