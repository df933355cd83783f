import hashlib
import io
import random

import torch

from dsi_bench.classes import imagenet_classes
from dsi_bench.datasets import ShiftedImageNet
from dsi_bench.shifts import get_shift
from dsi_bench.synthesis import SampleRequest, Synthesizer, sample_seed
from dsi_bench.tokens import TokenBank


def test_sample_seed_is_the_documented_hash_and_ignores_the_shift():
    digest = hashlib.sha256(b"dsi-bench/sample-seed/v1:0:207:3").digest()
    assert sample_seed(0, 207, 3) == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    a = SampleRequest(get_shift("base"), 207, 3).sample_seed
    b = SampleRequest(get_shift("in the snow"), 207, 3).sample_seed
    assert a == b  # paired twins share their starting noise
    assert len({sample_seed(0, c, i) for c in range(20) for i in range(50)}) == 1000


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_pixels_do_not_depend_on_batch_size_composition_or_order(tiny_spec, tiny_tokens):
    """The same samples, requested with batch sizes 1 and 8 in shuffled order, give identical bytes."""
    ds = ShiftedImageNet("in the snow", classes="0-3", per_class=3, generator=tiny_spec.model, pipeline=tiny_spec,
                         tokens=tiny_tokens, cache_dir=False)
    singles = {i: _png(ds[i][0]) for i in range(len(ds))}
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    batched = {}
    for start in range(0, len(order), 8):
        idx = order[start:start + 8]
        for i, (img, label) in zip(idx, ds.__getitems__(idx)):
            batched[i] = _png(img)
            assert label == ds.request(i).class_index
    assert batched == singles
    assert len(set(singles.values())) == len(ds)  # and samples do differ from each other


def test_twins_share_noise_but_shifts_change_the_image(tiny_spec, tiny_tokens):
    kwargs = dict(classes=[5], per_class=1, pipeline=tiny_spec, tokens=tiny_tokens, cache_dir=False)
    base = ShiftedImageNet("base", **kwargs)
    snow = ShiftedImageNet("in the snow", **kwargs)
    assert base.metadata(0)["sample_seed"] == snow.metadata(0)["sample_seed"]
    assert _png(base[0][0]) != _png(snow[0][0])
    assert _png(ShiftedImageNet("base", seed=1, **kwargs)[0][0]) != _png(base[0][0])


def test_metadata_carries_full_provenance(tiny_spec, tiny_tokens):
    synth = Synthesizer(tiny_spec.replace(sampler="dpm++2m"), TokenBank.load(tiny_tokens), imagenet_classes())
    [sample] = synth.generate([SampleRequest(get_shift("at night"), 207, 4, seed=3)])
    m = sample.metadata
    assert m["key"] == "at_night/0207/04"
    assert m["prompt"] == "a photo of a <Golden Retriever-207> at night"
    assert m["sample_seed"] == sample_seed(3, 207, 4) and m["seed"] == 3
    assert m["model"] == tiny_spec.model and m["model_fingerprint"].startswith("sha256:")
    assert m["scheduler"] == "DPMSolverMultistepScheduler" and m["steps"] == 2
    assert m["guidance_scale"] == 7.5 and m["gen_size"] == 32 and m["out_size"] is None
    assert m["batch_size"] == 4 and m["device"] == "cpu" and m["dtype"] == "float32"
    assert m["package_version"] and m["torch_version"] == torch.__version__
    assert m["nsfw"] is None
    assert sample.image.size == (32, 32) and sample.image.mode == "RGB"


def test_output_resize_and_class_name_prompts(tiny_spec):
    synth = Synthesizer(tiny_spec.replace(out_size=24), None, imagenet_classes())
    [sample] = synth.generate([SampleRequest(get_shift("base"), 1, 0)])
    assert sample.image.size == (24, 24)
    assert sample.metadata["prompt"] == "a photo of a goldfish"


def test_ancestral_sampler_is_batch_invariant_too(tiny_spec, tiny_tokens):
    spec = tiny_spec.replace(sampler="euler-a")
    synth = Synthesizer(spec, TokenBank.load(tiny_tokens), imagenet_classes())
    reqs = [SampleRequest(get_shift("base"), c, 0) for c in range(5)]
    together = [_png(s.image) for s in synth.generate(reqs)]
    apart = [_png(synth.generate([r])[0].image) for r in reversed(reqs)][::-1]
    assert together == apart
