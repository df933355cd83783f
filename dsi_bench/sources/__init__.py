"""Data sources as plugins: one module per backend, one registry, imported when first used.

Built in (``list_sources()``): ``synth`` (generated on demand), ``shards`` (folders written by
``dsi-bench build`` / ``convert``, local or any fsspec URL), ``imagenet-star`` (the public
release) and ``hub`` (a set published with ``dsi-bench publish``). A new backend is one module
with a :class:`~dsi_bench.sources.base.Source` subclass plus one :func:`register_source` call;
``ShiftedImageNet``, ``evaluate``, ``score`` and the CLI (``--source`` choices) pick it up from
here, and the contract tests run against it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import SpecError, close_matches

if TYPE_CHECKING:
    from .base import Source

__all__ = ["list_sources", "open_source", "recorded_class_list", "register_source", "source_class"]

# name -> "module:Class" (imported on first use) or the class itself
_REGISTRY: dict[str, object] = {
    "synth": "dsi_bench.sources.synth:SynthSource",
    "shards": "dsi_bench.sources.shards:ShardSource",
    "imagenet-star": "dsi_bench.sources.release:ReleaseSource",
    "hub": "dsi_bench.sources.hub:HubSource",
}


def register_source(name: str, target=None, *, overwrite: bool = False) -> object:
    """Register a :class:`~dsi_bench.sources.base.Source` under ``name``.

    ``target`` is the class or a ``"module:Class"`` string (imported when first used). Without
    ``target``, returns a class decorator.

    Raises:
        SpecError: ``name`` is taken (pass ``overwrite=True`` to replace it).
    """
    if target is None:
        def decorate(cls):
            register_source(name, cls, overwrite=overwrite)
            return cls

        return decorate
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not target:
        raise SpecError(f"a source named {name!r} is already registered; pick another name or overwrite=True")
    _REGISTRY[name] = target
    return target


def list_sources() -> list[str]:
    """Registered source names, built-in ones first."""
    return list(_REGISTRY)


def source_class(name: str) -> type[Source]:
    """The class registered under ``name``.

    Raises:
        SpecError: an unknown name (with the available ones and close matches).
    """
    if name not in _REGISTRY:
        raise SpecError(f"unknown source {name!r}; available sources: {', '.join(_REGISTRY)}."
                        + close_matches(str(name), _REGISTRY))
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return target


def sources_taking(option: str) -> list[str]:
    """Registered sources whose own options include ``option``."""
    return [n for n in _REGISTRY if option in source_class(n).options]


def recorded_class_list(name: str, root=None, **options):
    """The class list the data of source ``name`` at ``root`` records, if it is not ImageNet-1k's
    (:meth:`Source.recorded_class_list`); options the source does not take are left out."""
    cls = source_class(name)
    return cls.recorded_class_list(root, **{k: v for k, v in options.items() if k in cls.options})


def open_source(name: str, root=None, shift="base", *, class_list=None, classes=None, per_class=None,
                masks=False, **options) -> Source:
    """Open one shift of a registered source.

    Args:
        name: a registered source (:func:`list_sources`).
        root, shift, classes, per_class, masks: see :class:`~dsi_bench.sources.base.Source`.
        class_list: the label space (default ImageNet-1k).
        **options: the source's own options; one it does not take is refused, never ignored.

    Raises:
        SpecError: unknown source, or an option the source does not use.
    """
    cls = source_class(name)
    unused = [k for k in options if k not in cls.options]
    if unused:
        k = unused[0]
        users = sources_taking(k)
        raise SpecError(f"{k}= does not apply to source {name!r}"
                        + (f"; it is an option of {', '.join(repr(u) for u in users)}" if users else "")
                        + "; leave it out")
    if class_list is None:
        from ..classes import imagenet_classes

        class_list = imagenet_classes()
    return cls(root, shift, class_list=class_list, classes=classes, per_class=per_class, masks=masks, **options)
