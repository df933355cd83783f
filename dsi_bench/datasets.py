"""``ShiftedDataset``: a labelled test set under one distribution shift, as a PyTorch dataset;
``ShiftedImageNet`` is its ImageNet case (ImageNet*).

The samples come from a source plugin (:mod:`dsi_bench.sources`): ``"synth"`` generates them
lazily (a ``DataLoader`` batch is one pipeline call, cached on disk), ``"shards"`` reads
WebDataset shards written by ``dsi-bench build`` / ``convert``, ``"imagenet-star"`` reads the
public release, ``"hub"`` reads a set published with ``dsi-bench publish``; more can be
registered. This class does what is the same for all of them: choosing classes and samples per
class, applying masks, transforms, and the torchvision dataset contract.

The label space (``class_list``) is the one given, else the one the data records (a token bank
learned on your own dataset records its classes; a shard folder built or published with such a
bank records them in its manifest), else ImageNet-1k. Labels, ``classes``, ``class_to_idx``, the
``classes=`` selection, prompts' class names and results' class names all follow it.

Samples are keyed ``{shift}/{class:04d}/{index:02d}`` in every source, so the same sample has
the same key (and, for PNG shards, the same pixels) wherever it comes from.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from torchvision.datasets import VisionDataset

from .classes import ClassList
from .errors import ClassSpecError, SpecError
from .images import draft_size
from .layout import key_index
from .pipeline import PipelineSpec
from .shifts import Shift
from .sources import open_source
from .sources.base import SampleStream
from .tokens import TokenBank
from .validate import check_non_negative_int, check_positive_int

if TYPE_CHECKING:
    from .synthesis import SampleRequest, Synthesizer

__all__ = ["SOURCES", "ShiftedDataset", "ShiftedImageNet", "argument_defaults", "dataset_arguments", "label_space"]

logger = logging.getLogger(__name__)

#: The built-in sources (``dsi_bench.sources.list_sources()`` also lists registered ones).
SOURCES = ("synth", "shards", "imagenet-star", "hub")

#: Arguments that belong to one source or another (``Source.options``); the rest apply to every source.
_SOURCE_OPTIONS = ("seed", "missing", "generator", "tokens", "steps", "sampler", "guidance_scale", "batch_size",
                   "device", "dtype", "gen_size", "out_size", "pipeline", "cache_dir", "verify")


def _range_summary(indices: Sequence[int]) -> str:
    if not indices:
        return "none"
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


class ShiftedDataset(VisionDataset):
    """The classes of a dataset under a distribution shift ("golden retrievers in the rain",
    "red panda toys in the snow").

    ``ds[i]`` is ``(image, label)``, class-major. Labels are indices of the full label space, so
    a classifier's prediction over that space compares directly. The label space is ``class_list``
    if given, else the class list the data records (a token bank learned on your dataset, a shard
    folder or published set built with one), else ImageNet-1k (see :func:`label_space`).

    Args:
        shift: a catalog name ("in the rain", "in_the_rain"), a template with ``<TOKEN>``,
            a phrase, or a :class:`~dsi_bench.shifts.Shift`.
        source: where samples come from: a registered source (:func:`dsi_bench.sources.list_sources`).
        root: where the source's data is: ``"shards"``: the shard folder or URL;
            ``"imagenet-star"``: the release folder or zip; ``"hub"``: ``USER/NAME`` or a local
            export folder; ``"synth"`` takes none.
        classes: which classes, e.g. ``"0-9,207"``, ``[1, 2]``, ``"goldfish"``; default all
            (prebuilt sources: all the source holds; ``"synth"``: all the tokens cover, e.g. the
            world's ten with ``tokens="world"``).
        per_class: samples per class (``"synth"``: default 50; prebuilt: at most this many,
            default all).
        seed: base seed; sample seeds derive from ``(seed, class, index)`` (``"synth"``).
        masks: prebuilt sources only. ``False`` (default): every sample. ``True``: the source's
            own masks (``"imagenet-star"``: the release's CLIP masks, fetched; ``"shards"``,
            ``"hub"``: the ``keep`` flags recorded in converted shards). A path: a mask file
            (the release's ``masks.npy``/``.npz``, or a keyed ``.npz``). Masks are bound to
            sample keys, never to positions.
        missing: ``"imagenet-star"``: ``"error"`` (default) or ``"skip"`` files missing from
            the copy of the release (both name them).
        fast_decode: opt-in JPEG draft decoding: decode at reduced scale when ``transform`` starts
            by shrinking (see :mod:`dsi_bench.images`). Faster, but the classifier's input (and so
            the accuracy) differs from full decoding, which the original and published numbers use;
            default ``False`` (full decoding). PNGs are always decoded in full.
        verify: ``"shards"``: serve only shards whose sha256 matches the manifest (default
            ``True``; each shard is hashed once per process). ``False`` skips the hash, for data
            checked already (``dsi-bench verify``); results record which.
        generator: ``"synth"``: the diffusion model, a diffusers folder or Hub id (overrides
            ``pipeline.model``).
        tokens: ``"synth"``: class tokens: a :class:`~dsi_bench.tokens.TokenBank`, a path in
            any supported format, ``"imagenet-star"`` (the release's, from the Hub), or
            ``None`` to put class names in the prompts instead.
        steps, sampler, guidance_scale, batch_size, device, dtype, gen_size, out_size:
            ``"synth"``: override the corresponding :class:`~dsi_bench.pipeline.PipelineSpec`
            fields (``batch_size`` and ``device`` are the generator's).
        pipeline: ``"synth"``: a full spec; the keyword overrides above apply on top of it.
        class_list: the label space (default: what the data records, else ImageNet-1k); any
            :class:`ClassList` works. One that contradicts the class list a token bank or shard
            folder records is refused.
        cache_dir: ``"synth"``: sample cache folder; ``None`` = the default cache, ``False`` = none.
        transform, target_transform: applied to the image and label, as in torchvision.
        model: deprecated name of ``generator``.

    An option that belongs to another source than the one chosen is refused, not ignored.

    Raises:
        ShiftError, ClassSpecError, TokenBankError, SpecError, CacheError, ShardError,
        ReleaseError, MaskError: on bad arguments, in the constructor, before anything is
            generated or decoded.
    """

    #: The name deprecation messages use.
    _public_name = "ShiftedDataset"

    def __init__(
        self,
        shift: str | Shift = "base",
        source: str = "synth",
        root: str | os.PathLike | None = None,
        *,
        classes: str | int | Iterable[int | str] | None = None,
        per_class: int | None = None,
        seed: int = 0,
        masks=False,
        missing: str = "error",
        fast_decode: bool = False,
        verify: bool = True,
        generator: str | os.PathLike | None = None,
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
        model: str | os.PathLike | None = None,
    ):
        super().__init__(root, transform=transform, target_transform=target_transform)
        if model is not None:
            from .compat import deprecated

            name = self._public_name
            if generator is not None and os.fspath(generator) != os.fspath(model):
                raise TypeError(f"{name} got both generator= and its deprecated name model=; pass generator=")
            deprecated(f"{name}(model=...) is now {name}(generator=...)")
            generator = model
        check_positive_int(per_class, "per_class", example=50, optional=per_class is None)
        check_non_negative_int(seed, "seed")
        self.source = source
        self.fast_decode = fast_decode
        values = locals()
        given = {k: values[k] for k in _SOURCE_OPTIONS if not _is_default(k, values[k])}  # left at a default: not given
        self.class_list = _label_space(source, root, class_list, tokens)
        #: The arguments that made this dataset, other than the shift and transforms (``evaluate`` reuses them).
        self.arguments = {"source": source, "root": root, "classes": classes, "per_class": per_class,
                          "masks": masks, "fast_decode": fast_decode, "class_list": class_list, **given}
        requested = None if classes is None else self.class_list.resolve(classes)
        self.backend = open_source(source, root, shift, class_list=self.class_list, classes=requested,
                                   per_class=per_class, masks=masks, **given)
        self.shift: Shift = self.backend.shift
        self.seed = getattr(self.backend, "seed", seed)
        self.per_class = self.backend.per_class
        self.class_indices = self.backend.classes
        self._entries, self.masked_out = self._select()
        if self.class_indices is None:
            self.class_indices = sorted({e.label for e in self._entries})

    # ------------------------------------------------------------------ selection
    def _select(self) -> tuple[list, int]:
        """The samples of this dataset, in source order, and how many the masks removed.

        Raises:
            ClassSpecError: a requested class the source does not hold.
            MaskError: masks that say nothing about a selected sample.
        """
        wanted = None if self.class_indices is None else set(self.class_indices)
        chosen, masked, present, available = [], 0, set(), set()
        for e in self.backend.entries():
            available.add(e.label)
            if wanted is not None and e.label not in wanted:
                continue
            if self.per_class is not None and key_index(e.key) >= self.per_class:
                continue
            present.add(e.label)
            if self.backend.verdict(e):
                chosen.append(e)
            else:
                masked += 1
        absent = [c for c in self.class_indices or () if c not in present]
        if absent:
            names = ", ".join(f"{c} ({self.class_list[c].name})" for c in absent[:5])
            raise ClassSpecError(f"{len(absent)} requested class{'es have' if len(absent) > 1 else ' has'} no "
                                 f"samples in {str(self.root)!r} for shift {self.shift.id!r}: {names}"
                                 f"{', ...' if len(absent) > 5 else ''}; it holds classes "
                                 f"{_range_summary(sorted(available))}")
        return chosen, masked

    @property
    def entries(self) -> list:
        """The selected samples as the source's entries (key, label, keep flag, location)."""
        return self._entries

    @property
    def draft(self) -> int | None:
        """The edge JPEGs are decoded to in draft mode (``None``: full decoding)."""
        return draft_size(self.transform) if self.fast_decode else None

    def fingerprint(self) -> str:
        """What this dataset's samples are: the source's identity of its data, plus the selection."""
        text = self.backend.fingerprint(self._entries) + f"|classes={self.class_indices}|per_class={self.per_class}"
        return hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------------ torchvision contract
    @property
    def synthesizer(self) -> Synthesizer | None:
        """The :class:`~dsi_bench.synthesis.Synthesizer` of a ``"synth"`` dataset (``None`` otherwise)."""
        return getattr(self.backend, "synthesizer", None)

    @property
    def spec(self) -> PipelineSpec | None:
        """The generation settings of a ``"synth"`` dataset (``None`` otherwise)."""
        synth = self.synthesizer
        return synth.spec if synth is not None else None

    @property
    def classes(self) -> list[str]:
        """Names of the whole label space, so ``classes[label]`` is a sample's class name."""
        return self.class_list.names

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.class_list.class_to_idx()

    @property
    def targets(self) -> list[int]:
        return [e.label for e in self._entries]

    @property
    def keys(self) -> list[str]:
        """Sample keys ``{shift}/{class:04d}/{index:02d}``, in dataset order."""
        return [e.key for e in self._entries]

    def key(self, i: int) -> str:
        return self._entries[i].key

    def __len__(self) -> int:
        return len(self._entries)

    def request(self, i: int) -> SampleRequest:
        """The :class:`~dsi_bench.synthesis.SampleRequest` behind index ``i`` (``"synth"`` source)."""
        if self.synthesizer is None:
            raise SpecError(f"request() is for generated samples; this dataset reads {self.source!r}")
        return self._entries[i]

    def metadata(self, i: int) -> dict:
        """Provenance of sample ``i`` (prompt, seed, model, sampler, release key, mask flag, ...)."""
        return self.backend.metadata(self._entries[i])

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def apply_transforms(self, image, label: int) -> tuple:
        """``(transform(image), target_transform(label))``, each where set."""
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        """A batch of samples in one source call (``"synth"``: cache hits read, all misses generated together)."""
        entries = [self._entries[int(i)] for i in indices]
        images = self.backend.load(entries, self.draft)
        return [self.apply_transforms(image, e.label) for image, e in zip(images, entries)]

    def stream(self, return_key: bool = False) -> SampleStream:
        """An ``IterableDataset`` over the same samples, for sequential evaluation.

        ``DataLoader`` workers and ``torch.distributed`` ranks each read their own part (whole
        shards for shard folders, blocks of samples otherwise); every sample is read once.
        """
        return SampleStream(self, return_key)

    def extra_repr(self) -> str:
        lines = [f"Shift: {self.shift.id} ({self.shift.template!r})", f"Source: {self.source}",
                 f"Classes: {len(self.class_indices)} of {len(self.class_list)} ({_range_summary(self.class_indices)})"]
        if self.synthesizer is None:
            lines.append(f"Masks: {self.backend.describe_masks(self.masked_out)}")
        return "\n".join(lines + self.backend.describe())


class ShiftedImageNet(ShiftedDataset):
    """ImageNet-1k classes under a distribution shift: the ImageNet* case of :class:`ShiftedDataset`.

    Same arguments and behaviour; by default the release's 1000 tokens (``tokens="imagenet-star"``)
    and the ImageNet-1k label space with the release's class names. Given a token bank learned on
    another dataset, it takes that bank's classes as :class:`ShiftedDataset` does (prefer that
    name for your own datasets).
    """

    _public_name = "ShiftedImageNet"


def label_space(data) -> ClassList:
    """The label space of a dataset, or of a dict of its arguments, without opening the data.

    ``class_list`` if given; else the class list the data records when it is not ImageNet-1k's (the
    ``"synth"`` source: the token bank's; ``"shards"``/``"hub"``: the manifest's, from a build with
    such a bank); else ImageNet-1k.

    Raises:
        ClassSpecError: ``class_list`` contradicts the class list the data records.
        SpecError: a mapping key that is not a dataset argument.
    """
    if isinstance(data, ShiftedDataset):
        return data.class_list
    args = {**argument_defaults(), **dataset_arguments(data)}
    return _label_space(args["source"], args["root"], args["class_list"], args["tokens"])


def _label_space(source: str, root, class_list: ClassList | None, tokens) -> ClassList:
    from .classes import choose_class_list
    from .sources import recorded_class_list

    recorded = recorded_class_list(source, root, tokens=tokens)
    where = "the token bank" if source == "synth" else repr(str(root))
    return choose_class_list(class_list, recorded, where)


def argument_defaults() -> dict:
    """``ShiftedDataset``'s data arguments and their defaults (everything but the shift, transforms and
    the deprecated ``model``): the keys ``data=`` dicts may use."""
    return dict(_argument_defaults())


@functools.cache
def _argument_defaults() -> dict:
    import inspect

    skip = ("self", "shift", "transform", "target_transform", "model")
    return {n: p.default for n, p in inspect.signature(ShiftedDataset.__init__).parameters.items() if n not in skip}


def _is_default(name: str, value) -> bool:
    default = _argument_defaults()[name]
    return value is default or (isinstance(value, (str, int, float, type(None))) and value == default)


def dataset_arguments(data) -> dict:
    """``ShiftedDataset`` arguments from a dataset (its :attr:`~ShiftedDataset.arguments`) or a mapping.

    Raises:
        SpecError: a mapping key that is not a ``ShiftedDataset`` argument (with close matches).
    """
    from .errors import close_matches

    if isinstance(data, ShiftedDataset):
        return dict(data.arguments)
    if not isinstance(data, Mapping):
        raise SpecError(f"data={data!r} must be a ShiftedDataset or a dict of its arguments, e.g. "
                        "{'source': 'shards', 'root': 'shards/'}")
    allowed = list(argument_defaults())
    for key in data:
        if key not in allowed:
            raise SpecError(f"data has {key!r}, which is not a ShiftedDataset argument." + close_matches(key, allowed)
                            + f" Arguments: {', '.join(allowed)}")
    return dict(data)
