"""The interface every data source implements, and the stream that reads any of them.

A :class:`Source` is one shift of one backend (generated samples, a shard folder, the ImageNet*
release, a Hugging Face dataset): it lists its samples as :class:`Entry` objects (key, label,
recorded keep flag), loads their images (JPEGs in draft mode when asked), gives their
metadata, fingerprints a selection of them, and splits them among readers for streaming.
:class:`~dsi_bench.datasets.ShiftedImageNet` does the rest (class and per-class selection,
masks, transforms) the same way for every source.

Writing a source: subclass :class:`Source`, implement the abstract methods, and register it
(:func:`dsi_bench.sources.register_source`). The contract tests (``tests/test_source_contract.py``)
then run against it.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from ..classes import ClassList
from ..errors import MaskError, SpecError
from ..shifts import Shift, get_shift

if TYPE_CHECKING:
    from PIL import Image

    from ..masks import Masks

__all__ = ["FLAGS", "Entry", "KeepFlags", "SampleStream", "Source"]

logger = logging.getLogger(__name__)


class Entry(Protocol):
    """What a source knows about one sample without loading it."""

    key: str  # {shift}/{class:04d}/{index:02d}
    label: int  # index in the label space
    keep: bool | None  # the mask flag recorded with the sample, if any


class KeepFlags:
    """``masks=True`` on a source whose samples record their own keep flag (converted release shards)."""

    source = "keep flags in the shards"

    def __repr__(self) -> str:
        return "FLAGS"


#: The mask policy "use the flags recorded with each sample".
FLAGS = KeepFlags()


class Source(abc.ABC):
    """One shift of one data backend.

    Args:
        root: where the data is (see :attr:`root_help`); ``None`` for sources that make samples.
        shift: the shift asked for: a name, id, template or :class:`~dsi_bench.shifts.Shift`;
            the source resolves it against what it holds (:meth:`resolve_shift`).
        class_list: the label space.
        classes: class indices the caller selects (``None``: all the source holds).
        per_class: samples per class the caller selects (``None``: all).
        masks: ``False``/``None``, ``True`` (the source's own masks, see :meth:`resolve_masks`),
            a mask file path or a :class:`~dsi_bench.masks.Masks`.
        **options: the source's own options (:attr:`options`).

    Raises:
        SpecError, ShardError, ReleaseError, MaskError: bad root, unknown shift, bad masks.
    """

    #: The registry name (``"shards"``).
    name: ClassVar[str] = ""
    #: What ``root`` is, for help and errors; ``None`` when the source takes no root.
    root_help: ClassVar[str | None] = None
    #: ``ShiftedImageNet`` keyword arguments this source uses besides the common ones.
    options: ClassVar[tuple[str, ...]] = ()
    #: One line for ``--help`` and the README.
    description: ClassVar[str] = ""
    #: Samples loaded together by the default stream.
    read_batch: ClassVar[int] = 64

    def __init__(self, root, shift, *, class_list: ClassList, classes: Sequence[int] | None = None,
                 per_class: int | None = None, masks=False):
        if self.root_help is not None and root is None:
            raise SpecError(f"source {self.name!r} needs root= (--root): {self.root_help}")
        if self.root_help is None and root is not None:
            raise SpecError(f"source {self.name!r} takes no root (got {os.fspath(root)!r}); leave root= out")
        self.root = root
        self.class_list = class_list
        self.classes = None if classes is None else list(classes)
        self.per_class = per_class
        self.shift: Shift = self.resolve_shift(shift)
        self.masks = self.resolve_masks(masks)
        from ..masks import Masks

        if isinstance(self.masks, Masks):
            self.masks.check_shift(self.shift.id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shift.id!r}, root={self.root!r})"

    # ------------------------------------------------------------------ what the source holds
    @classmethod
    def recorded_class_list(cls, root, **options) -> ClassList | None:
        """The label space the data records, when it is not ImageNet-1k's (a custom token bank's
        classes, a manifest's); ``None``: nothing recorded (the dataset then uses ImageNet-1k).

        ``options`` are the dataset's options this source takes (:attr:`options`); called before
        the source is opened, so it must be cheap and never fetch anything big.
        """
        return None

    @classmethod
    @abc.abstractmethod
    def available_shifts(cls, root) -> list[str]:
        """Shift ids the source holds at ``root`` (what ``shifts="all"`` evaluates)."""

    def resolve_shift(self, shift) -> Shift:
        """The :class:`Shift` asked for; sources holding custom shifts resolve their ids here."""
        return get_shift(shift)

    @abc.abstractmethod
    def entries(self) -> Sequence[Entry]:
        """Every sample of the shift the source holds, in storage order."""

    # ------------------------------------------------------------------ masks
    def resolve_masks(self, masks) -> Masks | KeepFlags | None:
        """The mask policy: ``None``, :data:`FLAGS` or a :class:`~dsi_bench.masks.Masks`.

        ``True`` means the flags recorded with each sample; sources with other masks override.
        """
        from ..masks import Masks

        if masks is None or masks is False:
            return None
        if masks is True:
            return FLAGS
        return masks if isinstance(masks, Masks) else Masks.load(masks)

    def verdict(self, entry: Entry) -> bool:
        """Whether the masks keep a sample (``True`` without masks).

        Raises:
            MaskError: the masks say nothing about the sample.
        """
        if self.masks is None:
            return True
        if self.masks is FLAGS:
            if entry.keep is None:
                raise MaskError(f"sample {entry.key!r} in {str(self.root)!r} carries no mask flag (only shards "
                                "converted from the release with masks do); pass masks=PATH with a mask file instead")
            return entry.keep
        keep = self.masks.get(entry.key)
        if keep is None:
            raise MaskError(f"masks from {self.masks.source!r} have no entry for sample {entry.key!r}; they belong "
                            "to other data (check the shift and classes) or pass masks=False")
        return keep

    def describe_masks(self, masked_out: int) -> str:
        if self.masks is None:
            return "none"
        return f"{self.masks.source} ({masked_out} masked out)"

    # ------------------------------------------------------------------ samples
    @abc.abstractmethod
    def load_image(self, entry: Entry, draft: int | None = None) -> Image.Image:
        """The sample's image as an RGB PIL image (JPEGs decoded at reduced size when ``draft`` is set)."""

    def load(self, entries: Sequence[Entry], draft: int | None = None) -> list:
        """Images of several samples (sources that batch, such as generation, override this)."""
        return [self.load_image(e, draft) for e in entries]

    def iter_images(self, entries: Sequence[Entry], draft: int | None = None) -> Iterator:
        """Images of a run of samples, in order, :attr:`read_batch` at a time."""
        for start in range(0, len(entries), self.read_batch):
            yield from self.load(entries[start : start + self.read_batch], draft)

    @abc.abstractmethod
    def metadata(self, entry: Entry) -> dict:
        """The sample's provenance (prompt, seeds, model, release key, mask flag, ...)."""

    # ------------------------------------------------------------------ identity
    @abc.abstractmethod
    def fingerprint(self, entries: Sequence[Entry]) -> str:
        """Text that identifies the selected samples' data (hashed into results' fingerprints)."""

    @property
    def data_fingerprint(self) -> str | None:
        """A fingerprint of the whole published data (a manifest's), if the source has one."""
        return None

    # ------------------------------------------------------------------ streaming
    def partition(self, entries: Sequence[Entry], position: int, count: int) -> list[list[int]]:
        """The runs of entry positions reader ``position`` of ``count`` reads, in order.

        Default: one contiguous block per reader, cut into :attr:`read_batch` runs. Sources stored
        in shards give each reader whole shards instead.
        """
        total = len(entries)
        lo, hi = total * position // count, total * (position + 1) // count
        return [list(range(s, min(s + self.read_batch, hi))) for s in range(lo, hi, self.read_batch)]

    def describe(self) -> list[str]:
        """Lines for the dataset's ``repr`` beyond shift, source, classes, masks and root."""
        return []


class SampleStream(torch.utils.data.IterableDataset):
    """The samples of a :class:`~dsi_bench.ShiftedImageNet`, read sequentially.

    With ``DataLoader(num_workers=W)`` and ``torch.distributed`` ranks, the source's
    :meth:`Source.partition` gives each of the ``W * world`` readers its own runs (whole shards
    for shard folders), so every sample is read exactly once. Yields ``(image, label)`` or, with
    ``return_key``, ``(image, label, key)``.
    """

    def __init__(self, dataset, return_key: bool = False):
        super().__init__()
        self.dataset = dataset
        self.return_key = return_key

    def __iter__(self):
        from ..dist import World

        ds = self.dataset
        source, entries, draft = ds.backend, ds.entries, ds.draft
        position, count = World.current().reader
        for run in source.partition(entries, position, count):
            chosen = [entries[i] for i in run]
            for entry, image in zip(chosen, source.iter_images(chosen, draft)):
                image, label = ds.apply_transforms(image, entry.label)
                yield (image, label, entry.key) if self.return_key else (image, label)
