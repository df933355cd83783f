"""The generation pipeline: its spec, sampler presets, and cached loading.

A :class:`PipelineSpec` says everything about how images are made (model, sampler, steps,
guidance, sizes, denoiser batch, device, dtype). Loading is cached per process: every
dataset or job that asks for the same spec (and token bank) gets the same pipeline object,
and the UNet/VAE weights are shared between token banks.

Defaults reproduce the ImageNet* reference: ``stabilityai/stable-diffusion-2``, Euler,
50 steps, guidance 7.5, no negative prompt, generated at the model's native 768 px and
resized to 512 px. Unlike the reference, the device defaults to CPU (the caller owns the
device) and the safety checker is off (see :attr:`PipelineSpec.safety_checker`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .devices import resolve_device
from .errors import ModelLoadError, OfflineError, SpecError, close_matches
from .images import RESIZE_FILTER
from .memo import Memo
from .online import hub_unreachable
from .validate import check_finite_float, check_positive_int

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL",
    "SAMPLERS",
    "LoadedPipeline",
    "PipelineSpec",
    "SamplerPreset",
    "check_model",
    "clear_pipeline_cache",
    "load_pipeline",
    "model_fingerprint",
    "resolve_device",
]

logger = logging.getLogger(__name__)

#: The reference generator.
DEFAULT_MODEL = "stabilityai/stable-diffusion-2"
#: The reference's final image size (generated at 768 px, resized to 512 px).
REFERENCE_OUT_SIZE = 512


@dataclass(frozen=True)
class SamplerPreset:
    """A named sampler: diffusers scheduler class, its config overrides, default steps."""

    name: str
    scheduler: str
    default_steps: int
    config: tuple[tuple[str, object], ...] = ()
    description: str = ""


#: Selectable samplers. ``euler`` at 50 steps is the reference's.
SAMPLERS: dict[str, SamplerPreset] = {
    p.name: p
    for p in (
        SamplerPreset("euler", "EulerDiscreteScheduler", 50, description="reference: Euler, 50 steps"),
        SamplerPreset(
            "dpm++2m",
            "DPMSolverMultistepScheduler",
            25,
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2)),
            "DPM-Solver++(2M), 25 steps: about half the reference's UNet calls",
        ),
        SamplerPreset(
            "dpm++2m-karras",
            "DPMSolverMultistepScheduler",
            25,
            (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", True)),
            "DPM-Solver++(2M) with Karras sigmas, 25 steps",
        ),
        SamplerPreset("unipc", "UniPCMultistepScheduler", 20, description="UniPC, 20 steps"),
        SamplerPreset("ddim", "DDIMScheduler", 50, description="DDIM (eta 0), 50 steps"),
        SamplerPreset(
            "euler-a", "EulerAncestralDiscreteScheduler", 50, description="Euler ancestral (stochastic), 50 steps"
        ),
    )
}

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
_ATTENTION = ("sdpa", "eager")
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class PipelineSpec:
    """How images are generated. Every field that can change pixels is part of the sample key.

    Attributes:
        model: a diffusers Stable Diffusion folder or Hub id, or ``"world"``: the embedded world's
            generator (its shipped folder).
        revision: Hub branch, tag or commit (ignored for local folders).
        sampler: a name from :data:`SAMPLERS`.
        steps: denoising steps; ``None`` = the sampler's default (50 for ``euler``).
        guidance_scale: classifier-free guidance weight.
        gen_size: generation resolution in px; ``None`` = the model's native size (768 for SD2).
        out_size: final image size in px (PIL's default resize filter, bicubic, as the original);
            ``None`` or 0 = keep ``gen_size``; ``"auto"`` (the default) = 512 px, the reference's,
            except for the embedded world, whose images keep their native 32 px (see :attr:`output_size`).
        negative_prompt: the unconditional prompt; ``None`` = empty (the reference's).
        batch_size: samples per denoiser call. Requests are always run in calls of exactly
            this many (the last call padded with repeats) because matrix kernels round
            differently for different batch shapes; this is what makes a sample's pixels
            independent of how requests are batched, ordered or combined. Changing it may
            change the lowest bits of pixels, so it is recorded with every sample.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"``).
        dtype: ``"auto"`` (float16 on CUDA, float32 elsewhere), ``"float32"``, ``"float16"``, ``"bfloat16"``.
        safety_checker: run the model's own safety checker. A flagged image comes out black
            (the reference left it on): the sample keeps its label but no longer shows the
            class, and its metadata says ``nsfw: true``. Off by default for that reason.
        attention: ``"sdpa"`` (PyTorch scaled-dot-product attention) or ``"eager"``.
        channels_last: put the UNet in channels-last memory format (faster convs on GPUs).
        compile: ``torch.compile`` the UNet (``True`` or a mode such as ``"max-autotune"``).
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    sampler: str = "euler"
    steps: int | None = None
    guidance_scale: float = 7.5
    gen_size: int | None = None
    out_size: int | str | None = "auto"
    negative_prompt: str | None = None
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "auto"
    safety_checker: bool = False
    attention: str = "sdpa"
    channels_last: bool = False
    compile: bool | str = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        from .embedded import resolve_world

        set_(self, "model", resolve_world(os.fspath(self.model), "generator"))
        if self.sampler not in SAMPLERS:
            raise SpecError(
                f"unknown sampler {self.sampler!r};{close_matches(self.sampler, SAMPLERS)} "
                f"choose one of {', '.join(SAMPLERS)}"
            )
        if self.out_size == 0:  # 0 = keep the generation size, as on the command line
            set_(self, "out_size", None)
        if self.out_size != "auto":
            check_positive_int(self.out_size, "out_size", optional=True)
        for name in ("steps", "gen_size"):
            check_positive_int(getattr(self, name), name, optional=True)
        check_positive_int(self.batch_size, "batch_size", example=8)
        if self.gen_size is not None and self.gen_size % 8:
            raise SpecError(f"gen_size={self.gen_size} must be a multiple of 8 (the VAE's downsampling), e.g. 768")
        check_finite_float(self.guidance_scale, "guidance_scale", low=0, example=7.5)
        set_(self, "device", resolve_device(self.device))
        dtype = str(self.dtype).replace("torch.", "").lower()
        if dtype != "auto" and dtype not in _DTYPES:
            raise SpecError(f"dtype {self.dtype!r} is not supported; use auto, float32, float16 or bfloat16")
        set_(self, "dtype", "auto" if dtype == "auto" else _DTYPES[dtype])
        if self.attention not in _ATTENTION:
            raise SpecError(f"attention={self.attention!r}; use one of {', '.join(_ATTENTION)}")
        if self.compile not in (True, False) and self.compile not in _COMPILE_MODES:
            raise SpecError(f"compile={self.compile!r}; use True/False or one of {', '.join(_COMPILE_MODES)}")

    # ------------------------------------------------------------------ derived
    def replace(self, **changes) -> PipelineSpec:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def preset(self) -> SamplerPreset:
        return SAMPLERS[self.sampler]

    @property
    def output_size(self) -> int | None:
        """The final image size in px (``None``: the generation size); ``"auto"`` resolved."""
        if self.out_size != "auto":
            return self.out_size
        from .embedded import is_world

        return None if is_world(self.model) else REFERENCE_OUT_SIZE

    @property
    def num_steps(self) -> int:
        return self.steps if self.steps is not None else self.preset.default_steps

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        name = self.dtype if self.dtype != "auto" else ("float16" if self.device_type == "cuda" else "float32")
        return getattr(torch, name)

    def load_key(self) -> tuple:
        """What determines the loaded weights (samplers and sizes are applied per call)."""
        return (
            self.model,
            self.revision,
            self.device,
            str(self.torch_dtype),
            self.safety_checker,
            self.attention,
            self.channels_last,
            self.compile,
        )

    def pixel_settings(self) -> dict:
        """Every setting besides model weights, tokens, prompt and seed that can change pixels."""
        return {
            "sampler": self.sampler,
            "scheduler": self.preset.scheduler,
            "scheduler_config": dict(self.preset.config),
            "steps": self.num_steps,
            "guidance_scale": float(self.guidance_scale),
            "gen_size": self.gen_size,
            "out_size": self.output_size,
            "resize": RESIZE_FILTER,
            "negative_prompt": self.negative_prompt,
            "batch_size": self.batch_size,
            "device": self.device_type,
            "dtype": str(self.torch_dtype).replace("torch.", ""),
            "attention": self.attention,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "safety_checker": self.safety_checker,
        }


# ---------------------------------------------------------------------- model identity
def _is_local(model: str) -> bool:
    return Path(model).expanduser().exists()


def _looks_like_path(model: str) -> bool:
    # Hub ids have at most one "/" ("org/name"); anything with more, or starting like a path, is a path.
    return model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1) or "\\" in model


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _check_model_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelLoadError(f"model path {str(folder)!r} is a file; pass the diffusers pipeline folder")
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"model folder {str(folder)!r} is not a diffusers pipeline (no model_index.json); pass a folder saved "
            "with pipe.save_pretrained() or downloaded with `hf download <model> --local-dir DIR`"
        )


def check_model(model: str) -> None:
    """Fail early on a model that is neither a diffusers folder nor a well-formed Hub id.

    Touches no network and loads no weights.

    Raises:
        ModelLoadError: naming the path and what a valid model looks like.
    """
    model = os.fspath(model)
    if _is_local(model):
        _check_model_folder(Path(model).expanduser())
    elif _looks_like_path(model) or not _HUB_ID.match(model):
        raise ModelLoadError(
            f"model {model!r} is neither an existing folder nor a Hub id like 'stabilityai/stable-diffusion-2'; "
            "check the path"
        )
    elif "/" in model and Path(model.split("/")[0]).expanduser().is_dir():
        # "org/name" is also a Hub id's shape; a local folder named like the org says it is a path
        raise ModelLoadError(
            f"model folder {model!r} does not exist (but {model.split('/')[0]!r} is a local folder); check the path, "
            f"or write ./{model} if you meant a folder and the Hub id elsewhere"
        )


def read_component_config(model: str, revision: str | None, component: str) -> dict | None:
    """A pipeline component's ``config.json`` without loading weights.

    Local folders are read directly; Hub ids only from the local Hub cache (no network).
    Returns ``None`` when the config is not available.
    """
    model = os.fspath(model)
    try:
        if _is_local(model):
            path = Path(model).expanduser() / component / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, f"{component}/config.json", revision=revision, local_files_only=True))
        return json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - missing, not cached, or unreadable: unknown until loaded
        return None


#: Model fingerprints per (folder, newest mtime) or (Hub id, revision).
_FINGERPRINTS = Memo("model fingerprints", 64)
_SMALL_FILE = 1 << 20


def _folder_fingerprint(folder: Path) -> str:
    """Content fingerprint of a model folder without reading multi-GB weights in full.

    Small files (configs, tokenizer) are hashed whole; large files contribute their size and
    their first and last MiB.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(folder).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 2 * _SMALL_FILE:
                h.update(fh.read())
            else:
                h.update(fh.read(_SMALL_FILE))
                fh.seek(-_SMALL_FILE, os.SEEK_END)
                h.update(fh.read(_SMALL_FILE))
    return "sha256:" + h.hexdigest()


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """A string that changes whenever the model's weights or configs change.

    Local folders: a content fingerprint (see :func:`_folder_fingerprint`). Hub ids: the
    commit hash the revision resolves to, from the local Hub cache if present, else online.

    Raises:
        ModelLoadError: the folder is missing or not a diffusers pipeline.
        OfflineError: a Hub id cannot be resolved offline.
    """
    model = os.fspath(model)
    check_model(model)
    if _is_local(model):
        folder = Path(model).expanduser().resolve()
        stamp = max((p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()), default=0)
        key = (str(folder), stamp)
        return _FINGERPRINTS.get_or_create(key, lambda: _folder_fingerprint(folder))
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"hub:{model}@{revision}"
    return _FINGERPRINTS.get_or_create((model, revision), lambda: f"hub:{model}@{_hub_commit(model, revision)}")


def _hub_commit(model: str, revision: str | None) -> str:
    """The commit a Hub revision resolves to: from the local Hub cache, else online."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=["model_index.json"])
        return Path(path).name
    except Exception as e:  # noqa: BLE001 - not in the local cache: ask the Hub
        offline = hub_unreachable()
        if offline is not None:  # at once, not after huggingface_hub's retries
            raise OfflineError(_offline_message(model, offline)) from e
        from huggingface_hub import HfApi

        try:
            return HfApi().model_info(model, revision=revision).sha
        except Exception as err:  # noqa: BLE001
            raise OfflineError(_offline_message(model, type(err).__name__)) from err


def _offline_message(model: str, reason: str) -> str:
    return (
        f"could not fetch model {model!r} from the Hugging Face Hub ({reason}); where you are online run "
        f"`hf download {model} --local-dir DIR`, then pass the folder (generator=DIR / --generator DIR)"
    )


# ---------------------------------------------------------------------- loading
@dataclass
class LoadedPipeline:
    """A ready pipeline plus what identifies it."""

    pipe: object
    spec: PipelineSpec
    fingerprint: str
    token_fingerprint: str | None
    scheduler_config: dict
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    def make_scheduler(self) -> object:
        """A fresh scheduler of the spec's sampler, from the model's own scheduler config.

        The model's training settings (betas, ``prediction_type`` such as SD2's
        v-prediction) carry over; only the preset's sampler options change. A fresh object
        per call means no step state leaks between calls.
        """
        import diffusers

        cls = getattr(diffusers, self.spec.preset.scheduler)
        return cls.from_config(self.scheduler_config, **dict(self.spec.preset.config))


#: UNet, VAE and scheduler per load key, shared by every token bank (a few GB each for SD2).
_BASES = Memo("pipeline bases", 4)
#: Ready pipelines per (load key, token bank).
_PIPELINES = Memo("pipelines", 8)
_CACHE_LOCK = threading.RLock()


def clear_pipeline_cache() -> None:
    """Forget every loaded pipeline in this process (frees their memory once unreferenced)."""
    with _CACHE_LOCK:
        _BASES.clear()
        _PIPELINES.clear()


@dataclass
class Components:
    """A Stable Diffusion pipeline's parts: the shared, frozen UNet, VAE and scheduler, and a fresh
    text encoder and tokenizer of its own (callers add tokens to them)."""

    unet: object
    vae: object
    scheduler: object
    text_encoder: object
    tokenizer: object
    others: dict = dataclasses.field(default_factory=dict)  # safety checker, feature extractor, ...

    def as_pipeline_kwargs(self) -> dict:
        """Keyword arguments for ``StableDiffusionPipeline(...)``."""
        return {"unet": self.unet, "vae": self.vae, "scheduler": self.scheduler, "text_encoder": self.text_encoder,
                "tokenizer": self.tokenizer, **self.others}


def load_components(pipeline: PipelineSpec) -> Components:
    """The parts of the pipeline a spec names, on its device and dtype.

    The UNet, VAE and scheduler come from the process-wide cache (loaded once per spec); the text
    encoder and tokenizer are loaded fresh on every call, so tokens added to them stay private.

    Raises:
        ModelLoadError, OfflineError, SpecError.
    """
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    # Loaded inside a caller's torch.inference_mode() (an evaluation generating on the fly), the weights
    # would be inference tensors, and the shared UNet/VAE could never be trained through later.
    with torch.inference_mode(False):
        base = _load_base(pipeline)
        # Cast after loading: transformers renamed its dtype argument across versions.
        text_encoder = _from_pretrained(CLIPTextModel, pipeline, subfolder="text_encoder").to(
            pipeline.device, pipeline.torch_dtype)
        tokenizer = _from_pretrained(CLIPTokenizer, pipeline, subfolder="tokenizer")
    others = {k: v for k, v in base.items() if k not in ("unet", "vae", "scheduler")}
    return Components(base["unet"], base["vae"], base["scheduler"], text_encoder, tokenizer, others)


def _check_worker_device(spec: PipelineSpec) -> None:
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is not None and spec.device_type == "cuda" and multiprocessing.get_start_method(allow_none=True) in (
        None,
        "fork",
    ):
        raise SpecError(
            f"generation on {spec.device} cannot run inside forked DataLoader workers (num_workers="
            f"{info.num_workers}); use num_workers=0 (generation is already batched on the GPU) or "
            "DataLoader(..., multiprocessing_context='spawn')"
        )


def _from_pretrained(cls, spec: PipelineSpec, **kwargs):
    local = _is_local(spec.model)
    offline = None if local else hub_unreachable()
    if offline is not None:  # the local Hub cache only, without huggingface_hub's retries
        kwargs["local_files_only"] = True
    try:
        return cls.from_pretrained(
            str(Path(spec.model).expanduser()) if local else spec.model,
            revision=None if local else spec.revision,
            **kwargs,
        )
    except Exception as e:  # noqa: BLE001 - diffusers/transformers raise many types for a bad folder
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local:
            raise ModelLoadError(
                f"could not load {spec.model!r} as a Stable Diffusion pipeline ({first_line}); pass a folder saved "
                "with pipe.save_pretrained() or downloaded with `hf download`"
            ) from e
        if offline is not None or isinstance(e, OSError):
            raise OfflineError(_offline_message(spec.model, offline or type(e).__name__)) from e
        raise


def _dtype_argument() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype``; use whichever this version takes."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _load_base(spec: PipelineSpec) -> dict:
    """UNet, VAE, scheduler config and safety checker, shared by every token bank."""
    import torch
    from diffusers import StableDiffusionPipeline

    key = spec.load_key()
    cached = _BASES.get(key)
    if cached is not None:
        return cached
    check_model(spec.model)
    resolve_device(spec.device, check=True)  # one line naming the devices there are, before any loading
    kwargs = {_dtype_argument(): spec.torch_dtype, "text_encoder": None, "tokenizer": None}
    if not spec.safety_checker:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    logger.info("loading %s (%s, %s)", spec.model, spec.device, spec.torch_dtype)
    pipe = _from_pretrained(StableDiffusionPipeline, spec, **kwargs)
    if spec.safety_checker and pipe.safety_checker is None:
        raise SpecError(
            f"safety_checker=True but {spec.model!r} ships no safety checker; pass safety_checker=False "
            "(--no-safety-checker)"
        )
    pipe.to(spec.device)
    if spec.attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0 as Processor
    else:
        from diffusers.models.attention_processor import AttnProcessor as Processor
    pipe.unet.set_attn_processor(Processor())
    pipe.vae.set_attn_processor(Processor())
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.compile:
        mode = None if spec.compile is True else spec.compile
        pipe.unet = torch.compile(pipe.unet, mode=mode)
    base = dict(pipe.components)
    base.pop("text_encoder", None)
    base.pop("tokenizer", None)
    _BASES.put(key, base)
    return base


def load_pipeline(spec: PipelineSpec, tokens=None) -> LoadedPipeline:
    """The process-wide pipeline for a spec and token bank, loading it on first use.

    Args:
        spec: the pipeline spec.
        tokens: a :class:`~dsi_bench.tokens.TokenBank` to inject (all its classes, one
            ``load_textual_inversion`` call), or ``None`` for plain prompts.

    Returns:
        A :class:`LoadedPipeline`; the same object for the same (spec, bank) in this process.

    Raises:
        ModelLoadError, OfflineError, TokenBankError, SpecError.
    """
    from diffusers import StableDiffusionPipeline

    _check_worker_device(spec)
    token_fp = tokens.fingerprint if tokens is not None else None
    key = (spec.load_key(), token_fp)
    with _CACHE_LOCK:
        cached = _PIPELINES.get(key)
        if cached is not None:
            return cached
        fingerprint = model_fingerprint(spec.model, spec.revision)
        # Each token bank gets its own text encoder and tokenizer (tokens are added to them);
        # the heavy UNet and VAE are shared.
        parts = load_components(spec)
        pipe = StableDiffusionPipeline(**parts.as_pipeline_kwargs())
        pipe.set_progress_bar_config(disable=True)
        if tokens is not None:
            tokens.inject(pipe, model_name=spec.model)
        loaded = LoadedPipeline(
            pipe=pipe,
            spec=spec,
            fingerprint=fingerprint,
            token_fingerprint=token_fp,
            scheduler_config=dict(parts.scheduler.config),
        )
        _PIPELINES.put(key, loaded)
        return loaded
