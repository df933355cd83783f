import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsi_bench.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------- errors a new user hits first
WNIDS = ("n01440764", "n01443537")


@pytest.fixture
def release_shards(tmp_path, monkeypatch):
    """A 2-class fake release (folders, pattern images) with base + in_the_snow, converted to shards;
    the ImageNet class table points at the fake WordNet ids."""
    from dsi_bench.convert import convert_release
    from dsi_bench.testing import fake_imagenet_classes, make_fake_release

    classes = fake_imagenet_classes(WNIDS)
    table = tmp_path / "classes.json"
    table.write_text(json.dumps([{"index": c.index, "wnid": c.wnid, "common_name": c.name} for c in classes]))
    monkeypatch.setenv("DSI_BENCH_IMAGENET_CLASSES", str(table))
    release = make_fake_release(tmp_path / "imagenet-star", shifts=("base", "in_the_snow"), wnids=WNIDS, size=16,
                                as_zip=False, pattern=True)
    convert_release(release, tmp_path / "shards", class_list=classes, classes="0-1", progress=False)
    return tmp_path


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("command", [
    ["generate", "--out", "{tmp}/out"],
    ["build", "--out", "{tmp}/out"],
    ["build", "--out", "{tmp}/out", "--device", "cpu", "--devices", "cpu,cuda:1"],
    ["eval", "--classifier", "torchvision:resnet18", "--root", "{tmp}/shards", "--results", "{tmp}/out/r.json"],
    ["eval", "--classifier", "torchvision:resnet18", "--source", "synth", "--device", "cpu", "--gen-device", "cuda",
     "--results", "{tmp}/out/r.json"],
    ["learn-tokens", "--data", "{tmp}/data", "--out", "{tmp}/out/t.safetensors"],
    ["clip-filter", "{tmp}/shards", "--masks-out", "{tmp}/out/m.npz"],
])
def test_missing_device_is_one_line_and_writes_nothing(command, tmp_path, capsys, no_cuda):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    if "--device" not in args:
        args += ["--device", "cuda"]
    t0 = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "cuda is not available here" in err and "devices here: cpu;" in err and "auto" in err, err
    assert not (tmp_path / "out").exists()  # checked before any output folder is created
    assert time.perf_counter() - t0 < 30  # refused up front, not after loading models


def test_device_names_what_there_is(monkeypatch):
    import torch

    from dsi_bench.devices import available_devices, resolve_device
    from dsi_bench.errors import SpecError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == "cuda" and resolve_device("CUDA:1", check=True) == "cuda:1"
    with pytest.raises(SpecError, match=r"--device cuda:2: cuda:2 does not exist here \(2 CUDA devices\); "
                                        r"devices here: cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2", check=True, option="--device")
    with pytest.raises(SpecError, match="not a torch device"):
        resolve_device("gpu")
    assert resolve_device("cuda:5") == "cuda:5"  # without check (a Ray worker's device): parsed only


def test_device_auto_is_the_default_and_results_record_the_resolved_device(release_shards, capsys, no_cuda):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    with_device = {name for name, p in sub.choices.items() if any(a.dest == "device" for a in p._actions)}
    assert with_device >= {"generate", "build", "eval", "learn-tokens", "clip-filter"}
    for name in with_device:
        assert next(a.default for a in sub.choices[name]._actions if a.dest == "device") == "auto", name
    results = release_shards / "r.json"
    assert main(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--root",
                 str(release_shards / "shards"), "--num-workers", "0", "-q", "--results", str(results)]) == 0
    saved = json.loads(results.read_text())
    assert saved["run"]["device"] == "cpu" and saved["hardware"]["device"] == "cpu"


def test_eval_and_score_take_the_missing_flag_their_errors_suggest(release_shards, capsys, caplog):
    (release_shards / "imagenet-star" / "in_the_snow" / WNIDS[1] / "07.jpg").unlink()
    data = ["--source", "imagenet-star", "--root", str(release_shards / "imagenet-star"), "--classes", "0-1"]
    eval_args = ["eval", "--classifier", "dsi_bench.testing:oracle_classifier", *data, "--num-workers", "0", "-q"]
    assert main(eval_args) == 2
    err = capsys.readouterr().err
    assert "1 file missing" in err and "--missing skip" in err and len(err.strip().splitlines()) == 1
    results, preds = release_shards / "r.json", release_shards / "p.csv"
    assert main([*eval_args, "--missing", "skip", "--results", str(results), "--predictions", str(preds)]) == 0
    saved = json.loads(results.read_text())
    assert saved["shifts"]["in_the_snow"]["n"] == 99 and saved["shifts"]["base"]["n"] == 100  # counted
    assert saved["run"]["dataset"]["missing"] == "skip"  # recorded
    assert any("1 file missing" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)  # said
    assert main(["score", str(preds), *data]) == 2
    assert "--missing skip" in capsys.readouterr().err
    assert main(["score", str(preds), *data, "--missing", "skip"]) == 0
    assert "in_the_snow   99" in capsys.readouterr().out
    # refused, not ignored, where a source has no missing files to skip, or without a source
    assert main(["score", str(preds), "--missing", "skip"]) == 2
    assert "--missing applies to" in capsys.readouterr().err
    assert main(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--root",
                 str(release_shards / "shards"), "--missing", "skip", "-q"]) == 2
    assert "missing" in capsys.readouterr().err


# ---------------------------------------------------------------------- offline
def _one_line_fast(argv, capsys, *, within=12.0):
    """One line, exit 2, well before huggingface_hub's retries (about 30 s) would end; slack for a loaded machine."""
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert seconds < within, f"{seconds:.1f} s: {err}"
    return err


@pytest.fixture
def no_network(monkeypatch):
    """Online mode, but every name lookup fails (what a machine without network sees)."""
    import socket

    from huggingface_hub import constants

    from dsi_bench.memo import clear_caches

    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    clear_caches()
    yield
    clear_caches()


@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE", "no network"])
def test_offline_hub_roots_and_downloads_fail_at_once_with_the_local_option(mode, release_shards, capsys, request):
    if mode == "no network":
        request.getfixturevalue("no_network")
    reason = "HF_HUB_OFFLINE is set" if mode == "HF_HUB_OFFLINE" else "Name or service not known"
    err = _one_line_fast(["verify", "hf://datasets/me/star-shards"], capsys)
    assert "cannot be reached" in err and reason in err and "pass that folder instead of the URL" in err
    err = _one_line_fast(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--root",
                          "hf://datasets/me/star-shards", "-q"], capsys)
    assert "pass that folder instead of the URL" in err
    err = _one_line_fast(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--source", "hub",
                          "--root", "me/star-snow", "--shifts", "base", "-q"], capsys)
    assert "--root DIR" in err
    err = _one_line_fast(["tokens", "imagenet-star"], capsys)
    assert "--tokens path/to/tokens.zip" in err
    err = _one_line_fast(["clip-filter", str(release_shards / "shards"), "--device", "cpu", "-q"], capsys)
    assert "--clip DIR" in err and "hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in err, err
    err = _one_line_fast(["generate", "--generator", "stabilityai/stable-diffusion-2", "--tokens", "none", "--out",
                          str(release_shards / "out"), "--device", "cpu", "-q"], capsys, within=20)
    assert "--generator DIR" in err


# ---------------------------------------------------------------------- help, progress, imports, README
def test_help_shows_every_default_and_no_escaped_percent():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "%%" not in parser.format_help()
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "%%" not in text and "%(" not in text, name
        for a in p._actions:
            if not a.option_strings or a.help in (None, argparse.SUPPRESS) or a.dest == "help":
                assert a.help is not None or a.default in (None, False), (name, a.option_strings)
                continue
            if a.default not in (None, False) and not isinstance(a, argparse._VersionAction):
                assert "default" in a.help, (name, a.option_strings, a.default)


def test_convert_progress_bar_says_convert(release_shards, capsys):
    assert main(["convert", str(release_shards / "imagenet-star"), "--classes", "0-1", "--shifts", "base",
                 "--out", str(release_shards / "c")]) == 0
    err = capsys.readouterr().err
    assert "convert" in err and "build" not in err


@pytest.mark.parametrize("command", ["verify", "leaderboard"])
def test_file_commands_do_not_import_diffusers(command, release_shards):
    import os

    if command == "verify":
        argv = ["verify", str(release_shards / "shards"), "-q"]
    else:
        assert main(["score", str(_oracle_predictions(release_shards)), "--results",
                     str(release_shards / "results" / "r.json")]) == 0
        argv = ["leaderboard", str(release_shards / "results"), "--out", str(release_shards / "board")]
    code = ("import sys; from dsi_bench.cli import main; code = main(sys.argv[1:]); "
            "print('LOADED', code, *[m for m in ('diffusers', 'transformers') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED 0", proc.stdout


def _oracle_predictions(folder):
    path = folder / "p.csv"
    rows = ["key,prediction"] + [f"{s}/{c:04d}/{i:02d},{c}" for s in ("base", "in_the_snow") for c in (0, 1)
                                 for i in range(50)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_readme_streaming_snippet_runs(release_shards, monkeypatch):
    """The README's block with ``ds.stream()``, run as written on the fixtures (shards/, imagenet-star/, masks.npy)."""
    import re

    import numpy as np

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "ds.stream()" in b)
    import functools

    import dsi_bench

    j = np.arange(50_000)  # the release's format: a pickled dict of per-shift arrays, entry j = class j // 50
    np.save(release_shards / "masks.npy", {s: j % 3 != 0 for s in ("base", "in_the_snow")}, allow_pickle=True)
    # the fixtures hold 2 of the 1000 classes: select them, as a real release would not need to
    monkeypatch.setattr(dsi_bench, "ShiftedImageNet", functools.partial(dsi_bench.ShiftedImageNet, classes="0-1"))
    monkeypatch.chdir(release_shards)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["x"].shape[0] == scope["y"].shape[0] > 1  # a batch: the loader collated tensors


def test_generate_that_fails_leaves_nothing_and_eval_names_a_generate_folder(tmp_path, tiny_model, capsys):
    """From the new-user trial: a failed generate left empty folders; the bank error did not say which classes it
    covers; eval on a generate folder blamed an interrupted build."""
    from dsi_bench.testing import save_tiny_tokens

    two = save_tiny_tokens(tmp_path / "two.safetensors", num_classes=2)
    base = ["generate", "--generator", str(tiny_model), "--tokens", str(two), "--shifts", "base",
            "--per-class", "1", "--steps", "2", "--out-size", "0", "-q"]
    out = tmp_path / "out"
    assert main([*base, "--classes", "all", "--out", str(out)]) == 2  # all 1000 asked for, the bank covers a few
    err = capsys.readouterr().err
    assert "it covers 2 classes (0-1)" in err and "--classes 0-1" in err, err
    assert not out.exists()

    broken = tmp_path / "broken"  # passes the up-front checks, fails when the pipeline loads
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    assert main([*base[:2], str(broken), *base[3:], "--classes", "0", "--out", str(mine)]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # ours removed, the user's kept

    gen = tmp_path / "gen"
    covered = tmp_path / "covered"  # without --classes: every class the bank covers
    assert main([*base, "--out", str(covered)]) == 0
    assert sorted(p.name for p in (covered / "base").iterdir() if p.is_dir()) == ["0000", "0001"]
    capsys.readouterr()

    assert main([*base, "--classes", "0", "--out", str(gen)]) == 0
    assert main(["eval", "--classifier", "dsi_bench.testing:oracle_classifier", "--root", str(gen)]) == 2
    err = capsys.readouterr().err
    assert "written by `dsi-bench generate`" in err and "--source synth" in err, err
