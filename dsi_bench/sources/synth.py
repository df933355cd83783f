"""Source ``synth``: samples generated on demand by a Stable Diffusion pipeline and class tokens.

Samples are :class:`~dsi_bench.synthesis.SampleRequest` objects (one per class and index); a
batch of them is one pipeline call, served from the on-disk sample cache where possible.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import SpecError
from .base import Source

if TYPE_CHECKING:
    from PIL import Image

    from ..pipeline import PipelineSpec
    from ..synthesis import SampleRequest

__all__ = ["SynthSource"]

#: Pipeline settings a dataset may override one by one (fields of PipelineSpec).
SPEC_FIELDS = ("steps", "sampler", "guidance_scale", "batch_size", "device", "dtype", "gen_size", "out_size")


class SynthSource(Source):
    name = "synth"
    description = "generated on demand by a diffusion model with class tokens (cached on disk)"
    options = ("seed", "generator", "tokens", "pipeline", "cache_dir", *SPEC_FIELDS)

    def __init__(self, root, shift, *, class_list, classes=None, per_class=None, masks=False, seed: int = 0,
                 generator=None, tokens="imagenet-star", pipeline=None, cache_dir=None, **overrides):
        from ..pipeline import DEFAULT_MODEL, PipelineSpec, check_model
        from ..synthesis import Synthesizer

        if masks not in (False, None):
            raise SpecError("masks apply to prebuilt sources ('shards', 'imagenet-star', 'hub'); for generated "
                            "samples, filter with the CLIP metric instead")
        spec = (pipeline or PipelineSpec()).replace(
            model=os.fspath(generator) if generator is not None else None, **overrides)
        if generator is None and pipeline is None:
            spec = spec.replace(model=DEFAULT_MODEL)
        check_model(spec.model)
        if classes is None:  # every class the tokens cover (all for the release's; the world's ten on its generator)
            from ..tokens import token_classes

            classes = token_classes(tokens, class_list, None, spec.model)
        super().__init__(root, shift, class_list=class_list, classes=classes, per_class=per_class or 50)
        self.seed = seed
        self.synthesizer = Synthesizer.open(spec, tokens, class_list, self.classes, cache_dir)
        self.read_batch = spec.batch_size

    @property
    def spec(self) -> PipelineSpec:
        return self.synthesizer.spec

    @classmethod
    def recorded_class_list(cls, root=None, tokens="imagenet-star", **options):
        """The token bank's classes, when it was learned on another dataset than ImageNet."""
        from ..tokens import bank_class_list

        return bank_class_list(tokens)

    @classmethod
    def available_shifts(cls, root=None) -> list[str]:
        from ..shifts import list_shifts

        return [s.id for s in list_shifts()]

    def entries(self) -> list[SampleRequest]:
        from ..synthesis import make_requests

        return make_requests(self.shift, self.classes, self.per_class, self.seed)

    def load(self, entries, draft=None) -> list:
        return [s.image for s in self.synthesizer.samples(list(entries))]

    def load_image(self, entry, draft=None) -> Image.Image:
        return self.load([entry])[0]

    def metadata(self, entry) -> dict:
        return self.synthesizer.metadata(entry)

    def fingerprint(self, entries) -> str:
        s = self.synthesizer
        plan = {"model": s.model_fingerprint, "tokens": None if s.tokens is None else s.tokens.fingerprint,
                "settings": s.spec.pixel_settings(), "seed": self.seed, "template": self.shift.template}
        return repr(sorted(plan.items()))

    def describe(self) -> list[str]:
        spec = self.spec
        size = f"{spec.gen_size or 'native'}->{spec.output_size or 'same'} px"
        s = self.synthesizer
        return [
            f"Per class: {self.per_class}, seed: {self.seed}",
            f"Model: {spec.model} ({spec.sampler}, {spec.num_steps} steps, guidance {spec.guidance_scale}, {size}, "
            f"batch {spec.batch_size}, {spec.device} {str(spec.torch_dtype).replace('torch.', '')})",
            f"Tokens: {s.tokens if s.tokens is not None else 'class names'}",
            f"Cache: {s.cache.root if s.cache is not None else 'off'}",
        ]
