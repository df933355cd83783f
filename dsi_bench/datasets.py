"""``ShiftedImageNet``: a labelled test set under one distribution shift, as a PyTorch dataset.

Sources: ``"synth"`` generates samples lazily with a Stable Diffusion pipeline and class
tokens (batched: a ``DataLoader`` batch is one call to :meth:`ShiftedImageNet.__getitems__`),
caching each sample on disk. Prebuilt sources (WebDataset shards, the ImageNet* release, the
Hugging Face Hub) plug into the same class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence

from torchvision.datasets import VisionDataset

from .classes import ClassList, imagenet_classes
from .errors import SpecError
from .pipeline import DEFAULT_MODEL, PipelineSpec, check_model
from .shifts import Shift, get_shift
from .synthesis import SampleRequest, Synthesizer
from .tokens import TokenBank

__all__ = ["SOURCES", "ShiftedImageNet"]

logger = logging.getLogger(__name__)

#: Data sources ``ShiftedImageNet`` can read; later sources register here.
SOURCES = ("synth",)


def _range_summary(indices: Sequence[int]) -> str:
    parts, run = [], [indices[0]]
    for i in indices[1:]:
        if i == run[-1] + 1:
            run.append(i)
        else:
            parts.append(run)
            run = [i]
    parts.append(run)
    text = ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in parts)
    return text if len(text) <= 60 else text[:57] + "..."


class ShiftedImageNet(VisionDataset):
    """ImageNet classes under a distribution shift ("golden retrievers in the rain").

    ``ds[i]`` is ``(image, label)``, class-major: sample ``i`` is index ``i % per_class`` of
    the ``i // per_class``-th selected class. Labels are indices of the full label space
    (ImageNet-1k by default), so a 1000-way classifier's prediction compares directly.

    Args:
        shift: a catalog name ("in the rain", "in_the_rain"), a template with ``<TOKEN>``,
            a phrase, or a :class:`~dsi_bench.shifts.Shift`.
        source: where samples come from; one of :data:`SOURCES`.
        root: the source's data location (unused by ``"synth"``).
        classes: which classes, e.g. ``"0-9,207"``, ``[1, 2]``, ``"goldfish"``; default all.
        per_class: samples per class.
        seed: base seed; sample seeds derive from ``(seed, class, index)``.
        model: diffusers folder or Hub id (overrides ``pipeline.model``).
        tokens: class tokens: a :class:`~dsi_bench.tokens.TokenBank`, a path in any
            supported format, ``"imagenet-star"`` (the release's, from the Hub), or ``None``
            to put class names in the prompts instead.
        steps, sampler, guidance_scale, batch_size, device, dtype, gen_size, out_size:
            override the corresponding :class:`~dsi_bench.pipeline.PipelineSpec` fields.
        pipeline: a full spec; the keyword overrides above apply on top of it.
        class_list: the label space (default ImageNet-1k); any :class:`ClassList` works.
        cache_dir: sample cache folder; ``None`` = the default cache, ``False`` = no cache.
        transform, target_transform: applied to the image and label, as in torchvision.

    Raises:
        ShiftError, ClassSpecError, TokenBankError, SpecError, CacheError: on bad arguments,
            up front, before anything is generated.
    """

    def __init__(
        self,
        shift: str | Shift = "base",
        source: str = "synth",
        root: str | os.PathLike | None = None,
        *,
        classes: str | int | Iterable[int | str] | None = None,
        per_class: int = 50,
        seed: int = 0,
        model: str | os.PathLike | None = None,
        tokens: TokenBank | str | os.PathLike | None = "imagenet-star",
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        gen_size: int | None = None,
        out_size: int | None = None,
        pipeline: PipelineSpec | None = None,
        class_list: ClassList | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ):
        super().__init__(root, transform=transform, target_transform=target_transform)
        if source not in SOURCES:
            raise SpecError(f"unknown source {source!r}; available sources: {', '.join(SOURCES)}")
        if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class <= 0:
            raise SpecError(f"per_class={per_class!r} must be a positive integer, e.g. 50")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SpecError(f"seed={seed!r} must be a non-negative integer")
        self.source = source
        self.shift = get_shift(shift)
        self.class_list = class_list if class_list is not None else imagenet_classes()
        self.class_indices = self.class_list.resolve(classes)
        self.per_class = per_class
        self.seed = seed
        spec = (pipeline or PipelineSpec()).replace(
            model=os.fspath(model) if model is not None else None,
            steps=steps,
            sampler=sampler,
            guidance_scale=guidance_scale,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            gen_size=gen_size,
            out_size=out_size,
        )
        if model is None and pipeline is None:
            spec = spec.replace(model=DEFAULT_MODEL)
        check_model(spec.model)
        self.synthesizer = Synthesizer.open(spec, tokens, self.class_list, self.class_indices, cache_dir)

    # ------------------------------------------------------------------ torchvision contract
    @property
    def spec(self) -> PipelineSpec:
        return self.synthesizer.spec

    @property
    def classes(self) -> list[str]:
        """Names of the whole label space, so ``classes[label]`` is a sample's class name."""
        return self.class_list.names

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.class_list.class_to_idx()

    @property
    def targets(self) -> list[int]:
        return [c for c in self.class_indices for _ in range(self.per_class)]

    def __len__(self) -> int:
        return len(self.class_indices) * self.per_class

    def request(self, i: int) -> SampleRequest:
        """The sample behind dataset index ``i``."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i %= n
        return SampleRequest(self.shift, self.class_indices[i // self.per_class], i % self.per_class, self.seed)

    def metadata(self, i: int) -> dict:
        """Provenance of sample ``i`` (prompt, seed, model, sampler, ...) without generating it."""
        return self.synthesizer.metadata(self.request(i))

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        """A batch of samples: cache hits are read, all misses are generated together."""
        requests = [self.request(int(i)) for i in indices]
        out = []
        for sample in self.synthesizer.samples(requests):
            image, label = sample.image, sample.request.class_index
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                label = self.target_transform(label)
            out.append((image, label))
        return out

    def extra_repr(self) -> str:
        spec = self.spec
        size = f"{spec.gen_size or 'native'}->{spec.out_size or 'same'} px"
        lines = [
            f"Shift: {self.shift.id} ({self.shift.template!r})",
            f"Source: {self.source}",
            f"Classes: {len(self.class_indices)} of {len(self.class_list)} ({_range_summary(self.class_indices)})",
            f"Per class: {self.per_class}, seed: {self.seed}",
            f"Model: {spec.model} ({spec.sampler}, {spec.num_steps} steps, guidance {spec.guidance_scale}, {size}, "
            f"batch {spec.batch_size}, {spec.device} {str(spec.torch_dtype).replace('torch.', '')})",
            f"Tokens: {self.synthesizer.tokens if self.synthesizer.tokens is not None else 'class names'}",
            f"Cache: {self.synthesizer.cache.root if self.synthesizer.cache is not None else 'off'}",
        ]
        return "\n".join(lines)
