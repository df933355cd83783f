import json
import subprocess
import sys

import pytest

from dsi_bench.cli import build_parser, main


def test_shifts_command(capsys):
    assert main(["shifts"]) == 0
    out = capsys.readouterr().out
    assert "in_the_snow" in out and "a photo of a <TOKEN> in the snow" in out and "24 shifts" in out
    assert main(["shifts", "in_the_*", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["id"] for d in data} >= {"in_the_rain", "in_the_beach"}


def test_every_command_help_shows_an_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"shifts", "generate", "tokens", "demo", "build", "verify", "convert", "eval", "score",
                                "leaderboard"}
    for name, p in sub.choices.items():
        assert "example:" in p.format_help() and f"dsi-bench {name}" in p.format_help(), name


def _generate(tiny_model, tiny_tokens, out, *extra):
    return main([
        "generate", "--generator", str(tiny_model), "--tokens", str(tiny_tokens), "--shift", "in the rain",
        "--classes", "0-1,207", "--per-class", "2", "--seed", "0", "--batch-size", "4", "--steps", "2",
        "--out-size", "0", "--out", str(out), "--quiet", "--no-cache", *extra,
    ])


def test_generate_writes_the_layout_and_metadata(tiny_model, tiny_tokens, tmp_path, capsys):
    out = tmp_path / "out"
    assert _generate(tiny_model, tiny_tokens, out, "--image-format", "jpg") == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert files == [f"in_the_rain/{c:04d}/{i:02d}.jpg" for c in (0, 1, 207) for i in (0, 1)]
    lines = [json.loads(x) for x in (out / "in_the_rain" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file"] for r in lines] == [f.split("/", 1)[1] for f in files]
    assert lines[-1]["prompt"] == "a photo of a <Golden Retriever-207> in the rain"
    assert lines[0]["format"] == "jpg" and lines[0]["quality"] == 95 and lines[0]["steps"] == 2
    assert "in_the_rain" in capsys.readouterr().out
    # A rerun with the same settings resumes: nothing new is generated, nothing is lost.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert _generate(tiny_model, tiny_tokens, out, "--image-format", "jpg") == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == before
    assert "      0" in capsys.readouterr().out
    # Other settings into the same folder regenerate instead of silently keeping stale images.
    assert _generate(tiny_model, tiny_tokens, out, "--image-format", "jpg", "--steps", "3") == 0
    lines = [json.loads(x) for x in (out / "in_the_rain" / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {r["steps"] for r in lines} == {3}


def test_generate_png_matches_the_dataset(tiny_model, tiny_tokens, tmp_path):
    from PIL import Image

    from dsi_bench.datasets import ShiftedImageNet
    from dsi_bench.pipeline import PipelineSpec

    out = tmp_path / "out"
    assert _generate(tiny_model, tiny_tokens, out) == 0
    spec = PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)
    ds = ShiftedImageNet("in the rain", classes=[207], per_class=2, pipeline=spec, tokens=tiny_tokens, cache_dir=False)
    with Image.open(out / "in_the_rain" / "0207" / "01.png") as im:
        assert im.tobytes() == ds[1][0].tobytes()


@pytest.mark.parametrize("args, message", [
    (["generate", "--shift", "in the rian", "--out", "{tmp}"], "Did you mean 'in_the_rain'"),
    (["generate", "--generator", "{tmp}/nope/model", "--tokens", "none", "--out", "{tmp}"],
     "neither an existing folder"),
    (["generate", "--classes", "0-1000", "--tokens", "none", "--out", "{tmp}"], "out of range"),
    (["generate", "--per-class", "0", "--out", "{tmp}"], "per_class=0"),
    (["generate", "--tokens", "missing.zip", "--out", "{tmp}"], "does not exist"),
    (["generate", "--sampler", "dpm", "--out", "{tmp}"], "invalid choice"),
    (["build", "--shifts", "base,in the snwo", "--tokens", "none", "--out", "{tmp}"], "Did you mean 'in_the_snow'"),
    (["build", "--samples-per-shard", "0", "--tokens", "none", "--out", "{tmp}"], "samples_per_shard=0"),
    (["verify", "{tmp}/nowhere"], "does not exist"),
    (["verify", "{tmp}"], "no manifest.json"),
    (["convert", "{tmp}/nowhere", "--out", "{tmp}/o"], "does not exist"),
    (["convert", "{tmp}", "--out", "{tmp}/o"], "no shifts found"),
    (["eval", "--classifier", "torchvision:resnet5", "--root", "{tmp}"], "Did you mean 'resnet50'"),
    (["eval", "--classifier", "torchvision:resnet18", "--weights", "none", "--root", "{tmp}/nowhere"],
     "does not exist"),
    (["eval", "--classifier", "torchvision:resnet18", "--root", "{tmp}", "--tokens", "t.zip"],
     "--tokens applies to --source synth only"),
    (["eval", "--root", "{tmp}"], "--classifier is required"),
    (["leaderboard", "{tmp}", "--out", "{tmp}/board", "--sort", "mcnemar_p"], "invalid choice"),
    (["score", "{tmp}/nowhere.csv"], "does not exist"),
    (["leaderboard", "{tmp}", "--out", "{tmp}/board"], "no dsi-bench results files"),
    (["convert", "{tmp}", "--shifts", "base", "--out", "{tmp}/o", "--masks", "{tmp}/m.npy"], "mask file"),
])
def test_cli_errors_are_one_line_exit_2(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) if message == "invalid choice" else _nullcontext() as exc:
        code = main(args)
    if message == "invalid choice":
        code = exc.value.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dsi_bench.cli", "generate", "--shift", "a <TOKEN> <TOKEN>", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("dsi-bench generate: error: prompt template") and "Traceback" not in proc.stderr


def test_tokens_command_converts_release_zip(tmp_path, capsys):
    import zipfile

    import torch

    with zipfile.ZipFile(tmp_path / "tokens.zip", "w") as zf:
        for i in range(3):
            import io

            buf = io.BytesIO()
            torch.save(torch.randn(1024), buf)
            zf.writestr(f"tokens/{i}.bin", buf.getvalue())
    bank = tmp_path / "bank.safetensors"
    assert main(["tokens", str(tmp_path / "tokens.zip"), "--out", str(bank), "--diffusers", str(tmp_path / "ti"),
                 "--generator", "stabilityai/stable-diffusion-2"]) == 0
    from dsi_bench.tokens import TokenBank

    loaded = TokenBank.load(bank)
    assert len(loaded) == 3 and loaded.base_model == "stabilityai/stable-diffusion-2"
    assert (tmp_path / "ti" / "0002" / "learned_embeds.safetensors").is_file()


def test_unwritable_output_folder(tiny_model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _generate(tiny_model, "none", blocker / "out") == 2
    err = capsys.readouterr().err
    assert "output folder" in err and "not writable" in err and len(err.strip().splitlines()) == 1


def test_generation_benchmark_runs(tmp_path):
    """The benchmark script stays runnable (a tiny, 2-step smoke run; not a timing)."""
    bench = _load_benchmark("bench_generate")
    out = tmp_path / "r.json"
    result = bench.main(["--images", "2", "--steps", "2", "--batch-sizes", "1,2", "--out-size", "0",
                         "--work", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert [r["batch_size"] for r in result["rows"]] == [1, 1, 2, 2]
    assert result["unet_gflops_per_sample_forward"] > 0


def test_build_verify_convert_commands(tiny_model, tiny_tokens, tmp_path, capsys):
    import numpy as np

    from dsi_bench.testing import make_fake_release

    out = tmp_path / "shards"
    assert main(["build", "--generator", str(tiny_model), "--tokens", str(tiny_tokens), "--shifts", "base,in_the_snow",
                 "--classes", "0-1", "--per-class", "2", "--samples-per-shard", "3", "--image-format", "png",
                 "--steps", "2", "--batch-size", "4", "--out-size", "0", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "built 4 shards (8 samples" in text and "in_the_snow" in text and "manifest:" in text
    assert main(["verify", str(out), "-q"]) == 0
    assert "all 4 shards (8 samples) match" in capsys.readouterr().out
    shard = out / "base" / "base-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-700])
    assert main(["verify", str(out), "-q"]) == 1
    assert "base/base-000001.tar" in capsys.readouterr().out

    release = make_fake_release(tmp_path / "release", shifts=("base",), wnids=("n01440764", "n01443537"), size=32)
    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": i, "wnid": f"n09{i:06d}" if i > 1 else ("n01440764", "n01443537")[i],
                                  "common_name": f"class {i}"} for i in range(1000)]))
    masks = tmp_path / "masks.npz"
    np.savez(masks, base=np.arange(50_000) % 2 == 0)
    import os

    os.environ["DSI_BENCH_IMAGENET_CLASSES"] = str(table)
    try:
        assert main(["convert", str(release), "--out", str(tmp_path / "star"), "--masks", str(masks),
                     "--classes", "0-1", "--samples-per-shard", "40", "-q"]) == 0
    finally:
        del os.environ["DSI_BENCH_IMAGENET_CLASSES"]
    text = capsys.readouterr().out
    assert "converted 3 shards (100 samples" in text
    from dsi_bench.datasets import ShiftedImageNet

    kept = ShiftedImageNet("base", source="shards", root=tmp_path / "star", masks=True)
    assert len(kept) == 50 and kept.masked_out == 50


def test_loader_benchmark_runs(tmp_path):
    """The loader benchmark stays runnable (50 images, one pass; not a timing)."""
    bench = _load_benchmark("bench_loader")
    result = bench.main(["--images", "50", "--num-workers", "0", "--repeats", "1", "--work", str(tmp_path),
                         "--out", str(tmp_path / "r.json")])
    names = [r["name"] for r in result["rows"]]
    assert names[0] == "bare loop" and "shards, stream" in names
    assert len({r["images"] for r in result["rows"]}) == 1  # every reader saw the same kept samples


def test_eval_score_leaderboard_commands(tmp_path, capsys):
    from dsi_bench.convert import convert_release
    from dsi_bench.testing import fake_imagenet_classes, make_fake_release

    wnids = ("n01440764", "n01443537")
    classes = fake_imagenet_classes(wnids)
    release = make_fake_release(tmp_path / "rel", shifts=("base", "in_the_snow"), wnids=wnids, size=16, pattern=True)
    convert_release(release, tmp_path / "shards", class_list=classes, classes="0-1", progress=False)
    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": c.index, "wnid": c.wnid, "common_name": c.name} for c in classes]))
    import os

    os.environ["DSI_BENCH_IMAGENET_CLASSES"] = str(table)
    try:
        board = tmp_path / "results"
        assert main(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--source", "shards", "--root",
                     str(tmp_path / "shards"), "--num-workers", "0", "--name", "oracle", "-q",
                     "--results", str(board / "oracle.json"), "--predictions", str(tmp_path / "p.csv")]) == 0
        out = capsys.readouterr().out
        assert "in_the_snow  100   70.0" in out and "results:" in out
        assert main(["score", str(tmp_path / "p.csv"), "--source", "shards", "--root", str(tmp_path / "shards"),
                     "--name", "submission", "--results", str(board / "submission.json")]) == 0
        assert "in_the_snow  100   70.0" in capsys.readouterr().out
        assert main(["leaderboard", str(board), "--out", str(tmp_path / "board")]) == 0
        assert "leaderboard.html" in capsys.readouterr().out
        assert main(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--source", "shards", "--root",
                     str(tmp_path / "shards"), "--shifts", "in the fog", "-q"]) == 2
        assert "'in_the_fog' is not in" in capsys.readouterr().err
    finally:
        del os.environ["DSI_BENCH_IMAGENET_CLASSES"]


def test_eval_benchmark_runs(tmp_path):
    """The harness-overhead benchmark stays runnable (50 images, one pass each; not a timing)."""
    bench = _load_benchmark("bench_eval")
    result = bench.main(["--images", "50", "--num-workers", "0", "--repeats", "1", "--classifier", "mobilenet_v3_small",
                         "--work", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert [r["name"] for r in result["rows"]] == ["bare loop", "dsi_bench.evaluate"]
    assert result["rows"][0]["images"] == result["rows"][1]["images"] == 50


def test_tokens_benchmark_runs(tmp_path):
    """The token-learning benchmark stays runnable (2 steps; not a timing)."""
    bench = _load_benchmark("bench_tokens")
    result = bench.main(["--steps", "2", "--classes", "2", "--images", "2", "--work", str(tmp_path),
                         "--out", str(tmp_path / "r.json")])
    assert [r["classes"] for r in result["rows"]] == [1, 1, 2]
    assert all(r["class_steps_per_s"] > 0 for r in result["rows"])


def _load_benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
