"""``ShiftedImageNet``: a labelled test set under one distribution shift, as a PyTorch dataset.

Sources:

* ``"synth"`` generates samples lazily with a Stable Diffusion pipeline and class tokens
  (batched: a ``DataLoader`` batch is one call to :meth:`ShiftedImageNet.__getitems__`),
  caching each sample on disk.
* ``"shards"`` reads WebDataset shards written by ``dsi-bench build`` / ``convert`` (a folder
  or an fsspec URL), with random access through a cached tar-offset index, or streaming
  through :meth:`ShiftedImageNet.stream`.
* ``"imagenet-star"`` reads the public ImageNet* release (zips or folders) directly.
* ``"hub"`` reads a set published with ``dsi-bench publish`` (a Hub repo id or a local export)
  through ``datasets``.

Samples are keyed ``{shift}/{class:04d}/{index:02d}`` in every source, so the same sample
has the same key (and, for PNG shards, the same pixels) wherever it comes from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence

import torch
from torchvision.datasets import VisionDataset

from .classes import ClassList, imagenet_classes
from .errors import MaskError, SpecError
from .images import draft_size
from .pipeline import DEFAULT_MODEL, PipelineSpec, check_model
from .shifts import Shift, get_shift
from .synthesis import SampleRequest, Synthesizer
from .tokens import TokenBank

__all__ = ["SOURCES", "ShiftedImageNet"]

logger = logging.getLogger(__name__)

#: Data sources ``ShiftedImageNet`` can read.
SOURCES = ("synth", "shards", "imagenet-star", "hub")


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


def _key_index(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


class _IndexStream(torch.utils.data.IterableDataset):
    """Streams a map-style dataset: each DataLoader worker takes one contiguous block."""

    def __init__(self, dataset: ShiftedImageNet, return_key: bool, chunk: int):
        super().__init__()
        self.dataset = dataset
        self.return_key = return_key
        self.chunk = chunk
        self.counts = {"read": 0, "yielded": 0, "masked": dataset.masked_out}

    def __iter__(self):
        from .shards import _worker_slice

        pos, n = _worker_slice()
        total = len(self.dataset)
        lo, hi = total * pos // n, total * (pos + 1) // n
        for start in range(lo, hi, self.chunk):
            idx = list(range(start, min(start + self.chunk, hi)))
            for i, (image, label) in zip(idx, self.dataset.__getitems__(idx)):
                self.counts["read"] += 1
                self.counts["yielded"] += 1
                yield (image, label, self.dataset.key(i)) if self.return_key else (image, label)


class ShiftedImageNet(VisionDataset):
    """ImageNet classes under a distribution shift ("golden retrievers in the rain").

    ``ds[i]`` is ``(image, label)``, class-major. Labels are indices of the full label space
    (ImageNet-1k by default), so a 1000-way classifier's prediction compares directly.

    Args:
        shift: a catalog name ("in the rain", "in_the_rain"), a template with ``<TOKEN>``,
            a phrase, or a :class:`~dsi_bench.shifts.Shift`.
        source: where samples come from; one of :data:`SOURCES`.
        root: ``"shards"``: the shard folder or URL; ``"imagenet-star"``: the release folder
            or zip; ``"hub"``: ``USER/NAME`` or a local export folder; unused by ``"synth"``.
        classes: which classes, e.g. ``"0-9,207"``, ``[1, 2]``, ``"goldfish"``; default all
            (prebuilt sources: all the source holds).
        per_class: samples per class (``"synth"``: default 50; prebuilt: at most this many,
            default all).
        seed: base seed; sample seeds derive from ``(seed, class, index)`` (``"synth"``).
        masks: prebuilt sources only. ``False`` (default): every sample. ``True``: the
            release's CLIP masks (``"imagenet-star"``: fetched from the code release;
            ``"shards"``: the ``keep`` flags recorded in converted shards). A path: a mask file
            (the release's ``masks.npy``/``.npz``, or a keyed ``.npz``). Masks are bound to
            sample keys, never to positions.
        missing: ``"imagenet-star"``: ``"error"`` (default) or ``"skip"`` files missing from
            the copy of the release (both name them).
        fast_decode: decode JPEGs at reduced scale when ``transform`` starts by shrinking
            (see :mod:`dsi_bench.images`); PNGs are always decoded in full.
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
        ShiftError, ClassSpecError, TokenBankError, SpecError, CacheError, ShardError,
        ReleaseError, MaskError: on bad arguments, up front, before anything is generated.
    """

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
        fast_decode: bool = True,
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
            from .errors import close_matches

            raise SpecError(f"unknown source {source!r}; available sources: {', '.join(SOURCES)}."
                            + close_matches(str(source), SOURCES))
        if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class <= 0):
            raise SpecError(f"per_class={per_class!r} must be a positive integer, e.g. 50")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SpecError(f"seed={seed!r} must be a non-negative integer")
        self.source = source
        shards = None
        if source == "shards" and root is not None:
            from .shards import ShardSet

            shards = ShardSet(root)  # opened once: it also tells custom shift ids apart
        self.shift = self._shift_of(shift, source, shards)
        self.class_list = class_list if class_list is not None else imagenet_classes()
        self.seed = seed
        self.fast_decode = fast_decode
        self.synthesizer: Synthesizer | None = None
        self._store = None
        self._entries = None
        self._masks = None
        self.masked_out = 0
        if source == "synth":
            if masks not in (False, None):
                raise SpecError("masks apply to prebuilt sources ('shards', 'imagenet-star'); for generated "
                                "samples, filter with the CLIP metric instead")
            self.class_indices = self.class_list.resolve(classes)
            self._class_set = set(self.class_indices)
            self.per_class = per_class or 50
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
        else:
            if root is None:
                raise SpecError(f"source {source!r} needs root= (the "
                                + ("shard folder or URL" if source == "shards" else "release folder or zip") + ")")
            self.per_class = per_class
            self.class_indices = None if classes is None else self.class_list.resolve(classes)
            self._class_set = set(self.class_indices or ())
            self._open_prebuilt(root, masks, missing, shards)

    @staticmethod
    def _shift_of(shift, source: str, shards) -> Shift:
        """The shift; an id the source holds (custom ones too) is taken as it is."""
        import re

        if source == "hub" and isinstance(shift, str) and re.fullmatch(r"[a-z0-9_]+-[0-9a-f]{8}", shift):
            # a custom shift's id, as published: the template is in the samples' metadata
            from .shifts import TOKEN

            return Shift(shift, shift, TOKEN, "custom", source="custom")
        if shards is not None and isinstance(shift, str) and "<" not in shift:
            try:
                direct = get_shift(shift)
                if direct.id == shift:
                    return direct
            except Exception:  # noqa: BLE001 - a near-miss of a catalog name; maybe a custom id below
                pass
            for s in shards.plan.get("shifts", []):
                if s.get("id") == shift and s.get("template"):
                    return get_shift(s["template"])
        return get_shift(shift)

    # ------------------------------------------------------------------ prebuilt sources
    def _open_prebuilt(self, root, masks, missing, shards) -> None:
        from .masks import Masks, resolve_masks

        if self.source == "imagenet-star":
            self._masks = resolve_masks(masks)  # True: the release's masks, fetched
        elif masks is True:
            self._masks = "flags"  # the keep flags recorded in each sample's metadata
        elif masks not in (False, None):
            self._masks = masks if isinstance(masks, Masks) else Masks.load(masks)
        if self.source == "shards":
            self._store = shards
            self._store.shards(self.shift.id)  # fail now on an unknown shift
        elif self.source == "hub":
            from .hub import HubSet

            self._store = HubSet(root, self.shift.id)
        else:
            from .release import ReleaseSet

            self._store = ReleaseSet(root, self.shift.id, self.class_list, self.class_indices, missing)
        if isinstance(self._masks, Masks):
            self._masks.check_shift(self.shift.id)

    def _select(self, key: str, label: int, flag: bool | None) -> bool | None:
        """``True``: a sample of this dataset; ``False``: masked out; ``None``: not selected."""
        if self.class_indices is not None and label not in self._class_set:
            return None
        if self.per_class is not None and _key_index(key) >= self.per_class:
            return None
        if self._masks is None:
            return True
        if self._masks == "flags":
            if flag is None:
                raise MaskError(f"sample {key!r} in {self.root!r} carries no mask flag (only shards converted from "
                                "the release with masks do); pass masks=PATH with a mask file instead")
            return flag
        keep = self._masks.get(key)
        if keep is None:
            raise MaskError(f"masks from {self._masks.source!r} have no entry for sample {key!r}; they belong to "
                            "other data (check the shift and classes) or pass masks=False")
        return keep

    @property
    def entries(self) -> list:
        """The selected samples' locations (prebuilt sources; built lazily, indexes cached)."""
        if self._entries is None:
            if self.source == "shards":
                raw = self._store.entries(self.shift.id)
            elif self.source == "hub":
                raw = self._store.entries(with_flags=self._masks == "flags")
            else:
                raw = self._store.entries
            chosen, masked, present, available = [], 0, set(), set()
            for e in raw:
                available.add(e.label)
                flag = getattr(e, "keep", None)
                verdict = self._select(e.key, e.label, flag)
                if verdict is not None:
                    present.add(e.label)
                if verdict:
                    chosen.append(e)
                elif verdict is False:
                    masked += 1
            absent = [c for c in self.class_indices or () if c not in present]
            if absent:
                from .errors import ClassSpecError

                names = ", ".join(f"{c} ({self.class_list[c].name})" for c in absent[:5])
                raise ClassSpecError(f"{len(absent)} requested class{'es have' if len(absent) > 1 else ' has'} no "
                                     f"samples in {str(self.root)!r} for shift {self.shift.id!r}: {names}"
                                     f"{', ...' if len(absent) > 5 else ''}; it holds classes "
                                     f"{_range_summary(sorted(available))}")
            self._entries, self.masked_out = chosen, masked
            if self.class_indices is None:
                self.class_indices = sorted({e.label for e in chosen})
                self._class_set = set(self.class_indices)
        return self._entries

    def _draft(self) -> int | None:
        return draft_size(self.transform) if self.fast_decode else None

    # ------------------------------------------------------------------ torchvision contract
    @property
    def spec(self) -> PipelineSpec | None:
        return self.synthesizer.spec if self.synthesizer is not None else None

    @property
    def classes(self) -> list[str]:
        """Names of the whole label space, so ``classes[label]`` is a sample's class name."""
        return self.class_list.names

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.class_list.class_to_idx()

    @property
    def targets(self) -> list[int]:
        if self.synthesizer is None:
            return [e.label for e in self.entries]
        return [c for c in self.class_indices for _ in range(self.per_class)]

    @property
    def keys(self) -> list[str]:
        """Sample keys ``{shift}/{class:04d}/{index:02d}``, in dataset order."""
        if self.synthesizer is None:
            return [e.key for e in self.entries]
        return [self.request(i).key for i in range(len(self))]

    def key(self, i: int) -> str:
        if self.synthesizer is None:
            return self.entries[i].key
        return self.request(i).key

    def __len__(self) -> int:
        if self.synthesizer is None:
            return len(self.entries)
        return len(self.class_indices) * self.per_class

    def request(self, i: int) -> SampleRequest:
        """The sample behind dataset index ``i`` (``"synth"`` source)."""
        if self.synthesizer is None:
            raise SpecError(f"request() is for generated samples; this dataset reads {self.source!r}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i %= n
        return SampleRequest(self.shift, self.class_indices[i // self.per_class], i % self.per_class, self.seed)

    def metadata(self, i: int) -> dict:
        """Provenance of sample ``i`` (prompt, seed, model, sampler, release key, mask flag, ...)."""
        if self.synthesizer is not None:
            return self.synthesizer.metadata(self.request(i))
        entry = self.entries[i]
        if self.source == "shards":
            return self._store.load_metadata(entry)
        if self.source == "hub":
            return self._store.metadata(entry.row)
        from .masks import Masks

        return self._store.metadata(entry, self._masks if isinstance(self._masks, Masks) else None)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def _finish(self, image, label: int) -> tuple:
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        """A batch of samples: for ``"synth"``, cache hits are read and all misses generated together."""
        if self.synthesizer is None:
            entries, draft = self.entries, self._draft()
            out = []
            for i in indices:
                entry = entries[int(i)]
                image = self._store.load_image(entry.row) if self.source == "hub" else \
                    self._store.load_image(entry, draft)
                out.append(self._finish(image, entry.label))
            return out
        requests = [self.request(int(i)) for i in indices]
        return [self._finish(s.image, s.request.class_index) for s in self.synthesizer.samples(requests)]

    def stream(self, return_key: bool = False):
        """An ``IterableDataset`` over the same samples, for sequential evaluation.

        Shards are read whole and sequentially (``DataLoader`` workers and ``torch.distributed``
        ranks each take their own shards); other sources stream blocks of indices. The
        returned object's ``counts`` says how many samples were read, yielded and masked out.
        """
        if self.source == "shards":
            from .shards import ShardStream

            return ShardStream(self._store, self.shift.id, select=self._select, transform=self.transform,
                               target_transform=self.target_transform, draft=self._draft(), return_key=return_key)
        chunk = self.spec.batch_size if self.synthesizer is not None else 64
        return _IndexStream(self, return_key, chunk)

    def extra_repr(self) -> str:
        lines = [f"Shift: {self.shift.id} ({self.shift.template!r})", f"Source: {self.source}"]
        if self.synthesizer is None:
            len(self)  # selects the samples (and the classes, when all were asked for)
            if self._masks is None:
                masks = "none"
            else:
                where = "keep flags in the shards" if self._masks == "flags" else self._masks.source
                masks = f"{where} ({self.masked_out} masked out)"
            lines += [
                f"Root: {self.root}",
                f"Classes: {len(self.class_indices)} of {len(self.class_list)} ({_range_summary(self.class_indices)})",
                f"Masks: {masks}",
            ]
            return "\n".join(lines)
        spec = self.spec
        size = f"{spec.gen_size or 'native'}->{spec.out_size or 'same'} px"
        lines += [
            f"Classes: {len(self.class_indices)} of {len(self.class_list)} ({_range_summary(self.class_indices)})",
            f"Per class: {self.per_class}, seed: {self.seed}",
            f"Model: {spec.model} ({spec.sampler}, {spec.num_steps} steps, guidance {spec.guidance_scale}, {size}, "
            f"batch {spec.batch_size}, {spec.device} {str(spec.torch_dtype).replace('torch.', '')})",
            f"Tokens: {self.synthesizer.tokens if self.synthesizer.tokens is not None else 'class names'}",
            f"Cache: {self.synthesizer.cache.root if self.synthesizer.cache is not None else 'off'}",
        ]
        return "\n".join(lines)
