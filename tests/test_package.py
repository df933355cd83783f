import json
import subprocess
import sys

from dsi_bench.testing import build_tiny_tokenizer


def test_import_is_light():
    code = (
        "import sys, dsi_bench; "
        "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_names_resolve():
    import dsi_bench

    for name in dsi_bench.__all__:
        assert getattr(dsi_bench, name) is not None, name


def test_tiny_pipeline_is_a_real_sd2_shaped_pipeline(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert (tiny_model / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_tiny_tokenizer_covers_any_text_without_unknowns():
    tok = build_tiny_tokenizer()
    ids = tok("a photo of a Golden Retriever in the snow, ünïcode & 123", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids  # every byte symbol is in the vocabulary
    assert len(tok("golden retriever", add_special_tokens=False).input_ids) < len("golden retriever")  # merges learned


def test_demo_runs_the_world_study_offline(tmp_path, capsys):
    from PIL import Image

    from dsi_bench.cli import main

    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--per-class", "2", "--shifts", "at_night", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "40 samples (2 shifts x 10 world classes x 2)" in out
    assert "all 1 shards (40 samples) match" in out or "all 2 shards (40 samples) match" in out
    assert "CLIP filter (the world's CLIP, calibrated thresholds): kept base" in out
    assert "The harness, world:base" in out and "McNemar p" in out
    assert "world:augmented" in out and "world:resnet" in out
    assert len(list((out_dir / "results").glob("*.json"))) == 3
    assert (out_dir / "leaderboard" / "leaderboard.html").is_file()
    assert "visual report (open in a browser" in out and (out_dir / "report" / "index.html").is_file()
    assert len(list((out_dir / "report").glob("*/index.html"))) == 3  # a page per classifier
    twins = Image.open(out_dir / "twins.png")
    assert twins.size[1] >= 64 and twins.size[0] > 10 * 2 * 64  # one row, a base/shift pair per class


def test_plumbing_demo_runs_offline(tmp_path, capsys):
    from dsi_bench.cli import main

    assert main(["demo", "--plumbing", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "in_the_snow" in out and "RANDOM weights" in out
    assert len(list((tmp_path / "demo" / "images" / "oil_painting").rglob("*.png"))) == 20
    assert "all 10 shards (100 samples) match" in out
    assert "The harness on those shards" in out and "McNemar p" in out
    board = tmp_path / "demo" / "leaderboard"
    assert (board / "leaderboard.html").is_file()
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        assert len(list((board / "plots").glob("*.png"))) == 5 and "5 plots" in out
    assert len(list((tmp_path / "demo" / "results").glob("*.json"))) == 3


def test_tiny_tokenizer_is_the_same_in_every_process():
    """The embedded tiny default must not depend on the process (hash-ordered BPE training did)."""
    import subprocess
    import sys

    code = ("from dsi_bench.testing import build_tiny_tokenizer; import json; "
            "print(json.dumps(sorted(build_tiny_tokenizer().get_vocab().items())))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
            for _ in range(2)]
    assert runs[0] and runs[0] == runs[1]
