"""Golden data: a tiny build and a tiny generated folder must keep their keys, labels and pixels.

The values in ``tests/golden/tiny.json`` were recorded before the package's sources were
refactored into plugins (issue 10), with the library versions listed there; ``resized`` (generated
at 48 px, resized to 32 px like SD2's 768 -> 512) was added when the resize filter became PIL's
default, bicubic (issue 11: the bytes of resized samples changed once; native-size ones did not). Files are read
with ``tarfile`` and PIL directly, not through the package's readers, so a reader bug cannot
hide a change. Pixels depend on the torch/diffusers/transformers/Pillow builds: with other
versions the pixel test skips (saying so) and the keys/labels test still runs.

Regenerate (only when a change is meant to alter the data): ``python tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "tiny.json"
SHIFTS = ["base", "in the snow", "a watercolor painting of a <TOKEN>"]
CLASSES = "0-1,207"
PER_CLASS = 2


def _versions() -> dict:
    import diffusers
    import PIL
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "pillow": PIL.__version__}


def _pixels(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()


def _read_build(out: Path) -> list[list]:
    rows = []
    for tar in sorted(out.glob("*/*.tar")):
        members: dict[str, dict] = {}
        with tarfile.open(tar) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for key, parts in members.items():
            image = parts.get("png") or parts.get("jpg")
            rows.append([key, int(parts["cls"]), _pixels(image)])
    return sorted(rows)


def _read_folder(out: Path) -> list[list]:
    rows = []
    for path in sorted(out.glob("*/*/*.jpg")):
        shift, cls, name = path.relative_to(out).parts
        rows.append([f"{shift}/{cls}/{name.split('.')[0]}", int(cls), _pixels(path.read_bytes())])
    return sorted(rows)


def _make(tmp: Path, model: Path, tokens: Path) -> dict:
    import torch

    from dsi_bench.build import build_shards
    from dsi_bench.folders import generate_folder
    from dsi_bench.pipeline import PipelineSpec

    spec = PipelineSpec(model=str(model), steps=2, out_size=None, batch_size=4)
    build_shards(tmp / "shards", pipeline=spec, tokens=tokens, shifts=SHIFTS, classes=CLASSES, per_class=PER_CLASS,
                 image_format="png", samples_per_shard=3, cpu_threads=1, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_folder(tmp / "folder", pipeline=spec, tokens=tokens, shifts=SHIFTS, classes=CLASSES,
                        per_class=PER_CLASS, image_format="jpg", cache_dir=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"build": _read_build(tmp / "shards"), "folder": _read_folder(tmp / "folder"),
            "resized": _resized(spec, tokens)}


def _resized(spec, tokens) -> list[list]:
    """Samples generated at 48 px and resized to 32 px (the 768 -> 512 ratio): pins the resize filter."""
    from dsi_bench.classes import imagenet_classes
    from dsi_bench.shifts import get_shift
    from dsi_bench.synthesis import SampleRequest, Synthesizer
    from dsi_bench.tokens import TokenBank

    synth = Synthesizer(spec.replace(gen_size=48, out_size=32), TokenBank.load(tokens), imagenet_classes())
    requests = [SampleRequest(get_shift("base"), c, i) for c in (0, 1, 207) for i in range(PER_CLASS)]
    rows = []
    for sample in synth.generate(requests):
        buf = io.BytesIO()
        sample.image.save(buf, format="PNG")
        rows.append([sample.request.key, sample.request.class_index, _pixels(buf.getvalue())])
    return sorted(rows)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model, tiny_tokens):
    return _make(tmp_path_factory.mktemp("golden"), tiny_model, tiny_tokens)


def test_keys_and_labels_match_the_golden_data(made):
    golden = json.loads(GOLDEN.read_text())
    for part in ("build", "folder", "resized"):
        assert [r[:2] for r in made[part]] == [r[:2] for r in golden[part]], part
    assert len(golden["build"]) == len(golden["folder"]) == len(SHIFTS) * 3 * PER_CLASS


def test_pixels_match_the_golden_data(made):
    golden = json.loads(GOLDEN.read_text())
    if golden["versions"] != _versions():
        pytest.skip(f"golden pixels were recorded with {golden['versions']}; this run has {_versions()}")
    for part in ("build", "folder", "resized"):
        assert made[part] == golden[part], part


def test_output_resize_is_pils_default_bicubic(tiny_model, tiny_tokens):
    """768 -> 512 as the original: ``Image.resize`` with PIL's default filter (bicubic), not Lanczos."""
    from PIL import Image

    from dsi_bench.classes import imagenet_classes
    from dsi_bench.pipeline import PipelineSpec
    from dsi_bench.shifts import get_shift
    from dsi_bench.synthesis import SampleRequest, Synthesizer
    from dsi_bench.tokens import TokenBank

    spec = PipelineSpec(model=str(tiny_model), steps=2, gen_size=48, out_size=None, batch_size=4)
    requests = [SampleRequest(get_shift("base"), c, 0) for c in (0, 1)]
    bank = TokenBank.load(tiny_tokens)
    native = Synthesizer(spec, bank, imagenet_classes()).generate(requests)
    resized_synth = Synthesizer(spec.replace(out_size=32), bank, imagenet_classes())
    resized = resized_synth.generate(requests)
    for n, r in zip(native, resized):
        assert n.image.size == (48, 48) and r.image.size == (32, 32)
        assert r.image.tobytes() == n.image.resize((32, 32)).tobytes()  # PIL's default, as the original
        assert r.image.tobytes() != n.image.resize((32, 32), Image.Resampling.LANCZOS).tobytes()
    # the filter is part of every sample's settings, so caches made with the old filter are not reused
    assert spec.pixel_settings()["resize"] == "bicubic" and resized[0].metadata["resize"] == "bicubic"
    legacy = dict(resized_synth._pixel_inputs(requests[0]), resize="lanczos")
    assert hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest() != resized_synth.cache_key(
        requests[0])


if __name__ == "__main__":  # regenerate the golden file
    import tempfile

    from dsi_bench.testing import save_tiny_pipeline, save_tiny_tokens

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = _make(d, save_tiny_pipeline(d / "tiny-sd"), save_tiny_tokens(d / "tiny.safetensors"))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"versions": _versions(), **data}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
