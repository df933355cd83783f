"""Classifiers from a spec string, with their own preprocessing, and class maps between label spaces.

Specs:

* ``torchvision:NAME`` with weights ``DEFAULT`` (default), an enum name (``IMAGENET1K_V1``),
  ``none`` (random init) or a checkpoint path; preprocessing from the weights' ``transforms()``.
* ``timm:NAME`` (``pip install timm``) with timm's pretrained weights, ``none`` or a checkpoint;
  preprocessing from timm's data config.
* ``hf:ORG/NAME`` or ``hf:/local/folder``: a transformers image classifier and its image processor.
* ``path/to/file.py:function`` or ``package.module:function``: a function returning an
  ``nn.Module``, or ``(module, transform)``.
* ``world:NAME``: the embedded world's classifiers (``base``, ``augmented``, ``resnet``).
* ``path/to/model.pt`` (TorchScript, ``torch.jit.save``).

Weights load through those libraries; offline, :class:`~dsi_bench.errors.OfflineError` says
which weights could not be fetched and how to pass a local file. Checkpoints are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .classes import ClassList
from .errors import ClassSpecError, ModelLoadError, OfflineError, OptionalDependencyError, SpecError, close_matches

__all__ = ["MODEL_KINDS", "ClassMap", "LoadedModel", "ModelKind", "imagenet_eval_transform", "load_model",
           "model_spec_help", "register_model_kind"]


@dataclass(frozen=True)
class ModelKind:
    """A way to name a classifier: ``{prefix}:{name}`` specs, loaded by ``loader(name, weights, spec)``."""

    prefix: str
    loader: Callable[[str, str | None, str], LoadedModel]
    form: str  # how a spec of this kind is written, for help and errors
    help: str


#: Classifier spec kinds by prefix (``torchvision:resnet50``). Add one with :func:`register_model_kind`.
MODEL_KINDS: dict[str, ModelKind] = {}
#: Spec forms recognised by shape rather than prefix (listed in help and errors after the kinds).
_OTHER_FORMS = ("file.py:function", "package.module:function", "a TorchScript .pt file")


def register_model_kind(prefix: str, form: str, help: str, *, overwrite: bool = False) -> Callable:
    """Register a classifier kind: a decorator for ``loader(name, weights, spec) -> LoadedModel``.

    Raises:
        SpecError: the prefix is taken (pass ``overwrite=True`` to replace it).
    """
    def decorate(loader):
        if prefix in MODEL_KINDS and not overwrite:
            raise SpecError(f"a model kind {prefix!r} is already registered")
        MODEL_KINDS[prefix] = ModelKind(prefix, loader, form, help)
        return loader

    return decorate


def model_spec_help() -> str:
    """The spec forms a classifier may be given in (every registered kind, then the other forms)."""
    return ", ".join([k.form for k in MODEL_KINDS.values()] + list(_OTHER_FORMS))


def imagenet_eval_transform(resize: int = 256, crop: int = 224) -> Callable:
    """The standard ImageNet evaluation transform (Resize, CenterCrop, ToTensor, Normalize)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


@dataclass
class LoadedModel:
    """A classifier ready to evaluate: module (eval mode), transform, and what it is."""

    module: object  # torch.nn.Module
    transform: Callable
    spec: str
    weights: str | None = None
    preprocessing: str = ""
    num_outputs: int | None = None
    output_names: list[str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec if self.weights in (None, "DEFAULT") else f"{self.spec} ({self.weights})"


# ---------------------------------------------------------------------- class maps
class ClassMap:
    """Maps a model's K outputs onto the label space.

    ``targets[k]`` is the label-space index of output ``k`` (or ``-1``: an output outside the
    label space, never predicted). Built from a list (JSON file) whose entries are label
    indices, WordNet ids or class names, or ``{"outputs": [...]}``.

    Raises:
        SpecError: entries that name no class, or two outputs mapped to one class.
    """

    def __init__(self, targets: Sequence[int], source: str = ""):
        self.targets = [int(t) for t in targets]
        self.source = source
        seen: dict[int, int] = {}
        for k, t in enumerate(self.targets):
            if t >= 0 and seen.setdefault(t, k) != k:
                raise SpecError(f"class map {source or ''} maps outputs {seen[t]} and {k} to the same class {t}; "
                                "each class needs at most one output")

    def __len__(self) -> int:
        return len(self.targets)

    @classmethod
    def from_entries(cls, entries: Sequence, classes: ClassList, source: str = "") -> ClassMap:
        targets = []
        for k, e in enumerate(entries):
            if e is None:
                targets.append(-1)
            elif isinstance(e, bool):
                raise SpecError(f"class map {source}: output {k} maps to {e!r}; use a class index, WordNet id or name")
            elif isinstance(e, int) or (isinstance(e, str) and e.strip().isdigit()):
                i = int(e)
                if not 0 <= i < len(classes):
                    raise SpecError(f"class map {source}: output {k} maps to class {i}, outside 0..{len(classes) - 1}")
                targets.append(i)
            elif isinstance(e, str):
                try:  # WordNet id, name or alias (torchvision's ImageNet names); shared names are refused
                    targets.append(classes.index_of(e))
                except ClassSpecError as cause:
                    raise SpecError(f"class map {source}: output {k} maps to {e!r}, which is not a class index, "
                                    f"WordNet id or unique class name of the label space ({cause})") from cause
            else:
                raise SpecError(f"class map {source}: output {k} maps to {e!r}, which is not a class index, WordNet id "
                                "or class name of the label space")
        return cls(targets, source)

    @classmethod
    def load(cls, path: str | os.PathLike, classes: ClassList) -> ClassMap:
        from .files import read_json

        path = Path(path).expanduser()
        data = read_json(path, "class map", SpecError)
        if isinstance(data, dict):
            data = data.get("outputs")
        if not isinstance(data, list) or not data:
            raise SpecError(f"class map {str(path)!r} must be a JSON list (one entry per model output) or "
                            '{"outputs": [...]}')
        return cls.from_entries(data, classes, str(path))


# ---------------------------------------------------------------------- loaders
def _checkpoint_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as cause:
        raise ModelLoadError(f"checkpoint {str(path)!r} does not exist") from cause
    except Exception as e:  # noqa: BLE001 - refused pickles, corrupt zips
        raise ModelLoadError(f"checkpoint {str(path)!r} could not be read safely (weights_only=True): {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"checkpoint {str(path)!r} holds {type(state).__name__}, not a state dict")
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_state(module, path: Path, spec: str) -> None:
    state = _checkpoint_state(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise ModelLoadError(f"checkpoint {str(path)!r} does not fit {spec} ({first})") from e


def _is_path(weights: str | None) -> bool:
    return bool(weights) and (os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors"))
                              or Path(weights).expanduser().exists())


def _offline(spec: str, what: str, e: Exception, hint: str) -> OfflineError:
    return OfflineError(f"could not fetch the weights of {spec} ({what}): {type(e).__name__}: {str(e)[:200]}. "
                        f"Offline, {hint}")


@register_model_kind("torchvision", "torchvision:NAME",
                     "torchvision classifiers; weights DEFAULT, an enum name, none or a checkpoint; the weights' "
                     "transforms()")
def _load_torchvision(name: str, weights: str | None, spec: str) -> LoadedModel:
    import torchvision.models as tvm

    available = tvm.list_models()
    if name not in available:
        raise SpecError(f"torchvision has no model {name!r}." + close_matches(name, available)
                        + " See torchvision.models.list_models()")
    w = weights or "DEFAULT"
    enum = tvm.get_model_weights(name)
    if _is_path(w):
        module = tvm.get_model(name, weights=None)
        _load_state(module, Path(w).expanduser(), spec)
        chosen = None
    elif w.lower() == "none":
        module, chosen = tvm.get_model(name, weights=None), None
    else:
        try:
            chosen = enum[w]
        except KeyError as cause:
            names = list(enum.__members__)
            raise SpecError(f"{spec} has no weights {w!r}; choose one of {', '.join(names)}, none, or a checkpoint "
                            "path" + close_matches(w, names)) from cause
        try:
            module = tvm.get_model(name, weights=chosen)
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, socket errors
            cache = os.path.join(os.environ.get("TORCH_HOME", "~/.cache/torch"), "hub", "checkpoints")
            raise _offline(spec, f"{chosen} from {chosen.url}", e,
                           f"put that file in {cache}/ or pass --weights path/to/checkpoint.pth") from e
    if chosen is not None:
        transform, prep = chosen.transforms(), f"{chosen}.transforms(): {_describe(chosen.transforms())}"
        names = list(chosen.meta.get("categories") or []) or None
    else:
        default = enum.DEFAULT.transforms()
        transform, prep = default, f"{enum.DEFAULT}.transforms() (weights {w}): {_describe(default)}"
        names = None
    return LoadedModel(module.eval(), transform, spec, w if not _is_path(w) else str(Path(w).expanduser()), prep,
                       _num_outputs(module), names)


@register_model_kind("world", "world:NAME", "the embedded world's classifiers (world:base, world:augmented, "
                     "world:resnet; 1000-way ImageNet outputs), or --weights a file from `dsi-bench world train`")
def _load_world(name: str, weights: str | None, spec: str) -> LoadedModel:
    from .world import load_classifier

    return load_classifier(name, weights, spec)


@register_model_kind("timm", "timm:NAME", "timm models (pip install 'dsi-bench[timm]') with timm's data config")
def _load_timm(name: str, weights: str | None, spec: str) -> LoadedModel:
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError as cause:
        raise OptionalDependencyError(f"{spec} needs timm: pip install 'dsi-bench[timm]'") from cause
    available = timm.list_models()
    if name not in available and name.split(".")[0] not in available:
        raise SpecError(f"timm has no model {name!r}." + close_matches(name, available) + " See timm.list_models()")
    w = weights or "DEFAULT"
    if _is_path(w):
        module = timm.create_model(name, pretrained=False)
        _load_state(module, Path(w).expanduser(), spec)
    elif w.lower() == "none":
        module = timm.create_model(name, pretrained=False)
    else:
        try:
            module = timm.create_model(name if w == "DEFAULT" else f"{name.split('.')[0]}.{w}", pretrained=True)
        except Exception as e:  # noqa: BLE001 - hub errors
            raise _offline(spec, "pretrained weights from the Hugging Face Hub", e,
                           "download them where you have network (they are cached by huggingface_hub) or pass "
                           "--weights path/to/checkpoint.pth") from e
    config = resolve_data_config({}, model=module)
    transform = create_transform(**config)
    return LoadedModel(module.eval(), transform, spec, w, f"timm data config {config}", _num_outputs(module))


def _hf_logits_module(model):
    """Wrap a transformers image classifier so that ``module(x)`` returns logits."""
    import torch

    class HFLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    return HFLogits(model)


def _refuse_pickled_weights(folder: Path, spec: str) -> None:
    """Refuse a transformers folder whose weights are only pickles (``pytorch_model.bin``): a pickle can run code.

    Raises:
        ModelLoadError: naming the folder and how to convert it.
    """
    if any(folder.glob("*.safetensors")) or not any(folder.glob("*.bin")):
        return
    raise ModelLoadError(f"{spec}: {str(folder)!r} holds its weights only as pickled .bin files, which dsi-bench does "
                         "not load (a pickle can run code); it needs model.safetensors: convert it where you trust "
                         "the file (transformers: AutoModelForImageClassification.from_pretrained(DIR)"
                         ".save_pretrained(DIR, safe_serialization=True))")


@register_model_kind("hf", "hf:ORG/NAME", "transformers image classifiers (Hub id or hf:/local/folder) with their "
                     "image processor")
def _load_hf(name: str, weights: str | None, spec: str) -> LoadedModel:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    kwargs = {"revision": weights} if weights and weights != "DEFAULT" else {}
    folder = Path(name).expanduser()
    if folder.is_dir():
        _refuse_pickled_weights(folder, spec)
        kwargs["use_safetensors"] = True  # never unpickle a user's folder
    try:
        model = AutoModelForImageClassification.from_pretrained(name, **kwargs)
        processor = AutoImageProcessor.from_pretrained(name, **kwargs)
    except pickle.UnpicklingError as e:  # a Hub model with pickled weights that torch will not load safely
        raise ModelLoadError(f"{spec}: its pickled weights cannot be read safely ({str(e).splitlines()[0][:120]}); "
                             "dsi-bench needs model.safetensors: use a revision or copy of the model that has it") \
            from e
    except OSError as e:
        if Path(name).expanduser().exists():
            raise ModelLoadError(f"{str(name)!r} is not a transformers image classifier folder ({str(e)[:200]})") \
                from e
        raise _offline(spec, f"{name} from the Hugging Face Hub", e,
                       f"download it (hf download {name} --local-dir DIR) and use hf:DIR") from e

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    labels = model.config.id2label
    names = [labels[i] for i in range(len(labels))] if labels else None
    return LoadedModel(_hf_logits_module(model).eval(), transform, spec, weights or "DEFAULT",
                       f"{type(processor).__name__} from {name}", model.config.num_labels, names)


def _load_function(target: str, func: str, spec: str) -> LoadedModel:
    import torch

    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise SpecError(f"model file {str(path)!r} does not exist (spec {spec!r})")
        mod_spec = importlib.util.spec_from_file_location(f"dsi_bench_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise SpecError(f"unknown model spec {spec!r}: cannot import {target!r} ({e})."
                            + close_matches(target, MODEL_KINDS) + f" Use {model_spec_help()}") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise SpecError(f"{target} has no function {func!r}." + close_matches(func, names))
    made = fn()
    transform = None
    if isinstance(made, tuple):
        made, transform = made[0], (made[1] if len(made) > 1 else None)
    if not isinstance(made, torch.nn.Module):
        raise SpecError(f"{spec} returned {type(made).__name__}; it must return an nn.Module or (module, transform)")
    prep = "the function's transform" if transform is not None else "standard ImageNet eval (256/224)"
    return LoadedModel(made.eval(), transform or imagenet_eval_transform(), spec, None, prep, _num_outputs(made))


def _describe(transform) -> str:
    return " ".join(str(transform).split())


def _num_outputs(module) -> int | None:
    for attr in ("num_classes",):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    import torch

    last = None
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            last = m.out_features
    return last


def load_model(spec, weights: str | None = None, transform: Callable | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from a spec string (see the module docs) or an ``nn.Module``.

    Args:
        spec: the model spec, an ``nn.Module``, or a :class:`LoadedModel` (returned as is).
        weights: ``DEFAULT``, an enum/tag name, ``none``, or a checkpoint path (torchvision, timm);
            a revision for ``hf:``.
        transform: overrides the model's preprocessing.

    Raises:
        SpecError: unknown spec kind or model name (with close matches), bad weights name.
        ModelLoadError: a checkpoint that cannot be read or does not fit.
        OfflineError: pretrained weights that cannot be fetched.
    """
    import torch

    if isinstance(spec, LoadedModel):
        loaded = spec
    elif isinstance(spec, torch.nn.Module):
        loaded = LoadedModel(spec.eval(), transform or imagenet_eval_transform(), type(spec).__name__, None,
                             "standard ImageNet eval (256/224)" if transform is None else "caller's transform",
                             _num_outputs(spec))
    else:
        loaded = _load_spec(str(spec), weights)
    if transform is not None:
        loaded.transform, loaded.preprocessing = transform, "caller's transform"
    return loaded


def _load_spec(spec: str, weights: str | None) -> LoadedModel:
    import torch

    kind, sep, rest = spec.partition(":")
    if sep and kind in MODEL_KINDS:
        if not rest:
            raise SpecError(f"model spec {spec!r} names no model, e.g. {MODEL_KINDS[kind].form}")
        return MODEL_KINDS[kind].loader(rest, weights, spec)
    if sep and (spec.rsplit(":", 1)[0].endswith(".py") or "/" not in spec) and not spec.endswith((".pt", ".ts")):
        target, func = spec.rsplit(":", 1)
        if target and func:
            return _load_function(target, func, spec)
    path = Path(spec).expanduser()
    if path.suffix in (".pt", ".ts", ".pth", ".torchscript") and path.is_file():
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{str(path)!r} is not a TorchScript model ({str(e)[:200]}); for a state dict, use "
                                 "torchvision:NAME --weights PATH") from e
        return LoadedModel(module.eval(), imagenet_eval_transform(), spec, None, "standard ImageNet eval (256/224)",
                           None)
    hint = close_matches(kind, MODEL_KINDS) if sep else ""
    raise SpecError(f"unknown model spec {spec!r}.{hint} Use {model_spec_help()}")
