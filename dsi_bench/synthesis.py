"""Deterministic, batched synthesis: (shift, class, index, seed) -> a labelled image.

Seeds. A sample's seed is derived from ``(seed, class_index, index)`` by a documented hash
(:func:`sample_seed`) and does *not* depend on the shift, so every shifted image has an
unshifted twin in ``base`` that starts from the same noise (paired evaluation uses this).

Batch invariance. Each sample gets its own ``torch.Generator`` (on the CPU, so the initial
noise is the same on every device), and the denoiser always runs on exactly
``spec.batch_size`` samples per call (the last call padded with repeats). Matrix kernels
round differently for different batch shapes (measured on CPU: up to 3e-6 per step, enough
to flip 8-bit pixels), while rows of a fixed-shape batch are computed identically wherever
they sit. So a sample's pixels are the same whatever batch, order or company it is
requested in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .cache import SampleCache
from .classes import ClassList
from .errors import TokenBankError
from .images import resize_image
from .layout import sample_key
from .pipeline import PipelineSpec, load_pipeline, model_fingerprint, read_component_config
from .shifts import Shift, get_shift
from .tokens import TokenBank, dim_mismatch_message, load_tokens
from .version import __version__

__all__ = ["GeneratedSample", "SampleRequest", "Synthesizer", "make_requests", "sample_key", "sample_seed"]

logger = logging.getLogger(__name__)

_SEED_DOMAIN = "dsi-bench/sample-seed/v1"


def sample_seed(seed: int, class_index: int, index: int) -> int:
    """The per-sample generator seed.

    ``int.from_bytes(sha256(f"dsi-bench/sample-seed/v1:{seed}:{class_index}:{index}")[:8], "little") & (2**63 - 1)``

    Independent of the shift (paired twins share noise) and of batching.
    """
    digest = hashlib.sha256(f"{_SEED_DOMAIN}:{int(seed)}:{int(class_index)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class SampleRequest:
    """One sample to generate."""

    shift: Shift
    class_index: int
    index: int
    seed: int = 0

    #: Generated samples carry no recorded mask flag (the :class:`~dsi_bench.sources.base.Entry` protocol).
    keep = None

    @property
    def key(self) -> str:
        return sample_key(self.shift.id, self.class_index, self.index)

    @property
    def label(self) -> int:
        return self.class_index

    @property
    def sample_seed(self) -> int:
        return sample_seed(self.seed, self.class_index, self.index)


@dataclass
class GeneratedSample:
    request: SampleRequest
    image: object  # PIL.Image.Image
    metadata: dict


def _native_size(model: str, revision: str | None) -> int | None:
    """The model's native resolution from its configs, without loading weights."""
    unet = read_component_config(model, revision, "unet")
    vae = read_component_config(model, revision, "vae")
    if unet is None or vae is None:
        return None  # known once the pipeline is loaded
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


class Synthesizer:
    """Generates samples for one pipeline spec, token bank and class list.

    The pipeline is loaded lazily (process-wide cache) on the first call to
    :meth:`generate`; computing keys and metadata never loads it.

    Args:
        pipeline: the pipeline spec (kept as :attr:`spec`).
        tokens: class tokens; ``None`` puts the class *name* into the prompt instead.
        class_list: the label space labels refer to.
        cache: where finished samples are kept; :meth:`samples` serves hits from it
            without loading the pipeline.
    """

    def __init__(
        self,
        pipeline: PipelineSpec,
        tokens: TokenBank | None,
        class_list: ClassList,
        cache: SampleCache | None = None,
    ):
        spec = self.spec = pipeline
        self.tokens = tokens
        self.class_list = class_list
        self.cache = cache
        if tokens is not None:
            # Fail before anything is generated, not at the first batch.
            width = (read_component_config(spec.model, spec.revision, "text_encoder") or {}).get("hidden_size")
            if width is not None and int(width) != tokens.dim:
                raise TokenBankError(dim_mismatch_message(tokens, int(width), spec.model))
        self._fingerprint: str | None = None
        self._gen_size: int | None = spec.gen_size

    @classmethod
    def open(
        cls,
        pipeline: PipelineSpec,
        tokens,
        class_list: ClassList,
        classes: Sequence[int],
        cache_dir=None,
    ) -> Synthesizer:
        """A synthesizer from user-level options, checked up front.

        Args:
            tokens: anything :func:`~dsi_bench.tokens.load_tokens` takes, or ``None`` for class names.
            classes: the class indices that will be requested; the bank must cover them.
            cache_dir: sample cache folder; ``None``/``True`` = the default cache, ``False`` = none.

        Raises:
            TokenBankError, CacheError: a bank missing a class or too wide/narrow; an unwritable cache.
        """
        from .embedded import is_world
        from .tokens import IMAGENET_STAR_TOKENS_REPO

        if is_world(pipeline.model) and isinstance(tokens, str) and tokens in ("imagenet-star",
                                                                                IMAGENET_STAR_TOKENS_REPO):
            raise TokenBankError("the ImageNet* tokens belong to Stable Diffusion 2, not to the world's generator; "
                                 "pass tokens='world' (--tokens world: the world's learned tokens) or tokens=None "
                                 "(--tokens none: class words)")
        bank = None
        if tokens is not None:
            bank = load_tokens(tokens, class_list=class_list)
            custom = bank.custom_class_list
            if custom is not None and custom.names != class_list.names:
                raise TokenBankError(f"the token bank was learned on {custom.name!r} ({len(custom)} classes) but the "
                                     f"label space is {class_list.name!r} ({len(class_list)} classes); use the bank's "
                                     "class list (tokens_class_list(tokens)) or leave class_list out")
            bank.require(classes)
        cache = None if cache_dir is False else SampleCache(None if cache_dir in (None, True) else cache_dir)
        return cls(pipeline, bank, class_list, cache)

    @property
    def model_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.spec.model, self.spec.revision)
        return self._fingerprint

    @property
    def gen_size(self) -> int | None:
        if self._gen_size is None:
            self._gen_size = _native_size(self.spec.model, self.spec.revision)
        return self._gen_size

    def token(self, class_index: int) -> str:
        if self.tokens is None:
            return self.class_list[class_index].name
        return self.tokens.token_for(class_index)

    def prompt(self, request: SampleRequest) -> str:
        return request.shift.prompt(self.token(request.class_index))

    def _pixel_inputs(self, request: SampleRequest) -> dict:
        import diffusers
        import torch

        return {
            "model": self.model_fingerprint,
            "token": None if self.tokens is None else self.tokens.class_fingerprint(request.class_index),
            "prompt": self.prompt(request),
            "sample_seed": request.sample_seed,
            **self.spec.pixel_settings(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        }

    def cache_key(self, request: SampleRequest) -> str:
        """sha256 over everything that determines the sample's pixels."""
        blob = json.dumps(self._pixel_inputs(request), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def metadata(self, request: SampleRequest) -> dict:
        """The sample's full provenance (computed without generating it)."""
        import diffusers
        import torch

        c = self.class_list[request.class_index]
        spec = self.spec
        return {
            "key": request.key,
            "shift": request.shift.id,
            "shift_name": request.shift.name,
            "shift_template": request.shift.template,
            "shift_version": request.shift.version,
            "class_index": request.class_index,
            "class_name": c.name,
            "wnid": c.wnid,
            "index": request.index,
            "seed": request.seed,
            "sample_seed": request.sample_seed,
            "prompt": self.prompt(request),
            "token": None if self.tokens is None else self.tokens.token_for(request.class_index),
            "token_fingerprint": None if self.tokens is None else self.tokens.class_fingerprint(request.class_index),
            "model": spec.model,
            "revision": spec.revision,
            "model_fingerprint": self.model_fingerprint,
            **spec.pixel_settings(),
            "gen_size": self.gen_size,
            "package_version": __version__,
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
            **({"torch_threads": torch.get_num_threads()} if spec.device_type == "cpu" else {}),
        }

    def generate(
        self,
        requests: Sequence[SampleRequest],
        progress: Callable[[int], None] | None = None,
    ) -> list[GeneratedSample]:
        """Generate samples, ``spec.batch_size`` per denoiser call, in request order.

        Args:
            requests: samples to make (any order, any mix of shifts and classes).
            progress: called with the number of samples finished after each call.

        Returns:
            One :class:`GeneratedSample` per request, in the same order.
        """
        import torch

        if not requests:
            return []
        spec = self.spec
        loaded = load_pipeline(spec, self.tokens)
        size = spec.gen_size or loaded.native_size
        self._gen_size = size
        out: list[GeneratedSample] = []
        b = spec.batch_size
        for start in range(0, len(requests), b):
            chunk = list(requests[start : start + b])
            padded = chunk + [chunk[-1]] * (b - len(chunk))
            generators = [torch.Generator("cpu").manual_seed(r.sample_seed) for r in padded]
            with loaded.lock:
                loaded.pipe.scheduler = loaded.make_scheduler()
                result = loaded.pipe(
                    prompt=[self.prompt(r) for r in padded],
                    negative_prompt=[spec.negative_prompt] * b if spec.negative_prompt else None,
                    num_inference_steps=spec.num_steps,
                    guidance_scale=spec.guidance_scale,
                    height=size,
                    width=size,
                    generator=generators,
                    output_type="pil",
                )
            flags = result.nsfw_content_detected
            for i, request in enumerate(chunk):
                image = result.images[i]
                if spec.output_size:
                    image = resize_image(image, spec.output_size)
                meta = self.metadata(request)
                meta["nsfw"] = None if flags is None else bool(flags[i])
                out.append(GeneratedSample(request, image, meta))
            if progress is not None:
                progress(len(chunk))
        return out


    def samples(
        self,
        requests: Sequence[SampleRequest],
        progress: Callable[[int], None] | None = None,
    ) -> list[GeneratedSample]:
        """Like :meth:`generate`, but served from the cache where possible.

        Only misses are generated (and then stored); a fully warm request never loads the
        pipeline.
        """
        out: list[GeneratedSample | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        keys = [self.cache_key(r) for r in requests] if self.cache is not None else [None] * len(requests)
        for i, (request, key) in enumerate(zip(requests, keys)):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = GeneratedSample(request, hit[0], hit[1])
            else:
                todo.setdefault(key or str(i), []).append(i)
        if progress is not None and len(requests) > sum(map(len, todo.values())):
            progress(len(requests) - sum(map(len, todo.values())))
        first = [positions[0] for positions in todo.values()]
        for sample, positions in zip(self.generate([requests[i] for i in first], progress), todo.values()):
            if self.cache is not None:
                self.cache.put(keys[positions[0]], sample.image, sample.metadata)
            for i in positions:
                out[i] = sample
        return out  # type: ignore[return-value]


def make_requests(
    shift: str | Shift, class_indices: Sequence[int], per_class: int, seed: int = 0
) -> list[SampleRequest]:
    """Requests for ``per_class`` samples of each class, class-major."""
    shift = get_shift(shift)
    return [SampleRequest(shift, c, i, seed) for c in class_indices for i in range(per_class)]
