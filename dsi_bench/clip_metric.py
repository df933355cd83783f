"""The CLIP metric: is the object there, and is the shift there? Scores, keep rules, masks, calibration.

Two rules, chosen by name (``rule=``, ``--rule``):

* ``"reference"`` (default; the original's metric): ``object_score`` = cos(image, "a photo of a
  {class name}"), the class-**name** caption; ``shift_score`` = cos(image, the shift's object-free
  caption), e.g. "a photo in the snow", "an oil painting" (:attr:`~dsi_bench.shifts.Shift.caption`;
  ``base`` has none). Keep when ``object_score >= object_threshold`` and, for shifted samples,
  ``shift_score >= shift_threshold``.
* ``"token-gain"`` (dsi-bench 0.1's metric): ``object_score`` = cos(image, "a photo of a <token>")
  with the learned token, and ``shift_score`` = the gain cos(image, full shifted prompt) -
  cos(image, base prompt). Same keep test on those two numbers.

**Thresholds.** The release does not publish the thresholds behind its ``masks.npy``; the
defaults here (:data:`OBJECT_THRESHOLD`, :data:`SHIFT_THRESHOLDS`) are placeholders, and every
output records them. :func:`calibrate_thresholds` (``dsi-bench clip-calibrate``) scores the
release's images and fits the thresholds that best reproduce its masks (:func:`fit_thresholds`,
a pure function on score arrays), reporting the agreement per shift; its JSON is accepted by
``thresholds=`` (``--thresholds``). Once measured with the real CLIP, the fitted values become the
defaults.

Text features are pooled at the end-of-text position (the first occurrence of the tokenizer's
end-of-text id), then projected, whatever the model config says: transformers pools at
``argmax(input_ids)`` when a config's ``eos_token_id`` is 2 (legacy configs, SD2's among them),
which lands on an injected class token (the highest id) and makes "a photo of a <tok>" and "a photo
of a <tok> in the snow" identical.

The default CLIP, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, is the original's (OpenCLIP ViT-H-14,
laion2b_s32b_b79k) and the model whose text tower SD2 uses, so a bank learned on SD2 is injected
into CLIP's tokenizer and scored directly (``token-gain``). With a CLIP whose text width differs
from the bank's, class names are used instead (and the result says so); asking for tokens then
(``use_tokens=True``) is an error. The caller owns device and dtype.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .compat import reject_unknown, renamed
from .embedded import is_world, resolve_world
from .errors import ModelLoadError, OfflineError, SpecError, TokenBankError
from .files import check_writable
from .memo import Memo
from .validate import check_finite_float

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLIP_RULES",
    "DEFAULT_CLIP",
    "DEFAULT_RULE",
    "Calibration",
    "ClipScorer",
    "Thresholds",
    "calibrate_thresholds",
    "clip_filter_shards",
    "clip_scores",
    "fit_thresholds",
    "keep_mask",
    "rule_captions",
]

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

#: The keep rules by name: what the object and shift scores are.
CLIP_RULES = {
    "reference": {"object_score": "cos(image, 'a photo of a {class name}')",
                  "shift_score": "cos(image, the shift's object-free caption)"},
    "token-gain": {"object_score": "cos(image, 'a photo of a <token>')",
                   "shift_score": "cos(image, full shifted prompt) - cos(image, base prompt)"},
}
DEFAULT_RULE = "reference"

#: Placeholder thresholds (not calibrated: the release does not publish its own; see calibrate_thresholds).
OBJECT_THRESHOLD = 0.20
SHIFT_THRESHOLDS = {"reference": 0.20, "token-gain": 0.0}
#: The token-gain rule's shift threshold under its 0.1 name.
SHIFT_MARGIN = SHIFT_THRESHOLDS["token-gain"]

#: How the calibration fits thresholds: one shift threshold for all shifts, or one per shift.
FIT_MODES = ("global", "per-shift")

#: CLIP models loaded in this process (a ViT-H is 4 GB: keep few).
_CACHE = Memo("CLIP models", 2)

_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _check_rule(rule: str) -> str:
    if rule not in CLIP_RULES:
        from .errors import close_matches

        raise SpecError(f"unknown CLIP rule {rule!r}; choose one of {', '.join(CLIP_RULES)}."
                        + close_matches(str(rule), list(CLIP_RULES)))
    return rule


def resolve_dtype(dtype, device: str) -> torch.dtype:
    """``None``/``"float32"`` -> float32; ``"auto"`` -> float16 on CUDA (the original's), else float32;
    ``"float16"``/``"bfloat16"`` or a ``torch.dtype`` as given.

    Raises:
        SpecError: anything else.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise SpecError(f"dtype {dtype!r} is not one of auto, float32, float16, bfloat16")
    return getattr(torch, _DTYPES[name])


class ClipScorer:
    """A CLIP model loaded once per process (per model, device, dtype, token bank).

    Args:
        model: a transformers CLIP folder or Hub id, or ``"world"`` (the embedded world's CLIP, which
            scores class names: its text tower is not the world generator's).
        tokens: a bank to inject (scored as learned tokens when CLIP's text width matches).
        use_tokens: ``False`` never injects; ``True`` makes a width mismatch an error.
        device: where CLIP runs (the caller's choice; ``"auto"`` picks CUDA, then MPS, then CPU).
        dtype: ``None``/``"float32"``, ``"float16"``, ``"bfloat16"``, ``"auto"`` or a ``torch.dtype``.
        batch_size: images (and texts) per forward pass.
    """

    def __init__(self, model: str = DEFAULT_CLIP, *, tokens=None, use_tokens: bool | None = None,
                 device: str = "cpu", dtype=None, batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        from .online import hub_unreachable
        from .pipeline import resolve_device

        self.device = resolve_device(device, check=True)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        if is_world(model) and use_tokens is None:
            # the world's CLIP has a text space of its own (unlike SD2's, which is OpenCLIP's): score class names
            use_tokens = False
        model = resolve_world(model, "clip")
        self.model_name = str(model)
        local = os.path.exists(os.path.expanduser(self.model_name))
        offline = None if local else hub_unreachable()  # offline: the Hub cache only, no retries
        try:
            self.model = CLIPModel.from_pretrained(self.model_name, local_files_only=offline is not None).to(
                self.device, self.dtype).eval()
            self.processor = CLIPProcessor.from_pretrained(self.model_name, local_files_only=offline is not None)
        except OSError as e:
            if local:
                raise ModelLoadError(f"{self.model_name!r} is not a CLIP model folder ({str(e)[:200]})") from e
            raise OfflineError(f"could not load CLIP {self.model_name!r} ({offline or type(e).__name__}); download it "
                               f"where you are online (hf download {self.model_name} --local-dir DIR) and pass "
                               "clip=DIR (--clip DIR)") from e
        width = self.model.config.text_config.hidden_size
        self.tokens = None
        self.text_mode = "class names"
        if tokens is not None:
            if tokens.dim == width:
                if use_tokens is not False:
                    self._inject(tokens)
            elif use_tokens:
                raise TokenBankError(f"CLIP {self.model_name!r} has a {width}-d text tower but the tokens are "
                                     f"{tokens.dim}-d; use a CLIP that shares the generator's text space "
                                     f"({DEFAULT_CLIP} for SD2) or use_tokens=False (--class-names)")
            else:
                logger.warning("CLIP %s has %d-d text embeddings, the tokens %d-d: scoring with class names",
                               self.model_name, width, tokens.dim)

    def _inject(self, bank) -> None:
        import torch

        tok = self.processor.tokenizer
        clash = [t for t in bank.tokens if t in tok.get_vocab()]
        if clash:
            raise TokenBankError(f"tokens {clash[:3]} already exist in the tokenizer of {self.model_name}")
        tok.add_tokens(list(bank.tokens))
        ids = tok.convert_tokens_to_ids(list(bank.tokens))
        text = self.model.text_model  # a CLIPTextModel: resize its own input embeddings
        text.resize_token_embeddings(len(tok), mean_resizing=False)
        text.config.vocab_size = len(tok)
        table = text.get_input_embeddings().weight
        with torch.no_grad():
            table[torch.tensor(ids)] = bank.embeddings.to(table.device, table.dtype)
        bad = [t for t in bank.tokens[:50] if len(tok(t, add_special_tokens=False).input_ids) != 1]
        if bad:
            raise TokenBankError(f"CLIP's tokenizer splits tokens {bad[:3]}; they cannot be scored as learned tokens")
        self.tokens = bank
        self.text_mode = "learned tokens"

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text features, pooled at each text's first end-of-text token, then projected.

        The pooling does not depend on the config's ``eos_token_id`` (see the module docs).
        """
        import torch

        tok = self.processor.tokenizer
        eos = tok.eos_token_id
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = tok(list(texts[i : i + self.batch_size]), padding=True, truncation=True, return_tensors="pt")
                ids = batch["input_ids"].to(self.device)
                hidden = self.model.text_model(input_ids=ids, attention_mask=batch["attention_mask"].to(self.device),
                                               return_dict=True).last_hidden_state
                is_eos = ids == eos
                if not bool(is_eos.any(dim=-1).all()):
                    raise SpecError(f"the tokenizer of {self.model_name} left no end-of-text token in a text")
                position = is_eos.int().argmax(dim=-1)  # the first end-of-text (padding may repeat it)
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), position]
                f = self.model.text_projection(pooled)
                out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(out)

    def image_features(self, images: Sequence) -> torch.Tensor:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                pixels = self.processor(images=list(images[i : i + self.batch_size]), return_tensors="pt")
                pixels = pixels["pixel_values"].to(self.device, self.dtype)
                f = self.model.get_image_features(pixel_values=pixels)
                f = getattr(f, "pooler_output", f)
                out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(out)


def _scorer(model, tokens, use_tokens, device, dtype, batch_size) -> ClipScorer:
    key = (str(model), None if tokens is None else tokens.fingerprint, use_tokens, str(device), str(dtype), batch_size)
    return _CACHE.get_or_create(key, lambda: ClipScorer(model, tokens=tokens, use_tokens=use_tokens, device=device,
                                                         dtype=dtype, batch_size=batch_size))


def _similarity(scorer: ClipScorer, img, texts: Sequence[str]) -> np.ndarray:
    """cos(image i, texts[i]); each distinct text is encoded once (50 images share a class caption)."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    feats = scorer.text_features(list(unique))
    import torch

    return (img * feats[torch.as_tensor(inverse.reshape(-1), device=feats.device)]).sum(-1).cpu().numpy()


def clip_scores(images: Sequence, class_prompts: Sequence[str], shift_prompts: Sequence[str | None], *,
                clip: str = DEFAULT_CLIP, tokens=None, use_tokens: bool | None = None, device: str = "cpu",
                dtype=None, batch_size: int = 32, **deprecated_names) -> dict:
    """CLIP similarities of each image with an object text and a shift text.

    Which texts make which rule is :func:`rule_captions`'s job: for ``reference``, the class-name
    caption and the object-free shift caption; for ``token-gain``, the base prompt and the full
    shifted prompt.

    Args:
        images: PIL images.
        class_prompts: per image, the object text.
        shift_prompts: per image, the shift text, or ``None`` (base samples).
        clip: the CLIP model, a transformers folder or Hub id (``model=`` is its deprecated name).
        tokens: the bank the prompts' tokens come from (injected when CLIP's text width matches).
        device, dtype: where and in which precision CLIP runs (see :class:`ClipScorer`).

    Returns:
        ``{"object_score": cos(image, object text), "shift_score": cos(image, shift text) (nan
        without one), "shift_gain": shift_score - object_score (the token-gain statistic), "text":
        "learned tokens"|"class names", "model": name}``, float32 arrays. Deterministic for a given
        model, device and dtype.
    """
    clip = renamed(deprecated_names, "model", "clip", clip, default=DEFAULT_CLIP, where="clip_scores: ")
    reject_unknown(deprecated_names, "clip_scores")
    if not (len(images) == len(class_prompts) == len(shift_prompts)):
        raise ValueError("images, class_prompts and shift_prompts must have the same length")
    scorer = _scorer(clip, tokens, use_tokens, device, dtype, batch_size)
    img = scorer.image_features(images)
    object_score = _similarity(scorer, img, class_prompts).astype(np.float32)
    shift_score = np.full(len(images), np.nan, dtype=np.float32)
    shifted = [i for i, p in enumerate(shift_prompts) if p]
    if shifted:
        shift_score[shifted] = _similarity(scorer, img[shifted], [shift_prompts[i] for i in shifted])
    return {"object_score": object_score, "shift_score": shift_score, "shift_gain": shift_score - object_score,
            "text": scorer.text_mode, "model": scorer.model_name}


def rule_captions(rule: str, shift, name: str, token: str | None = None) -> tuple[str, str | None]:
    """The (object text, shift text) a rule scores one image of ``shift`` with.

    Args:
        rule: ``"reference"`` or ``"token-gain"``.
        shift: a :class:`~dsi_bench.shifts.Shift` (or anything :func:`~dsi_bench.shifts.get_shift` takes).
        name: the class name (the ``reference`` rule's object, and ``token-gain``'s without a token).
        token: the class token (``token-gain``).

    Returns:
        ``("a photo of a tench", "a photo in the snow")`` for ``reference``; ``("a photo of a <tench-0>",
        "a photo of a <tench-0> in the snow")`` for ``token-gain``. The shift text is ``None`` for ``base``.

    Raises:
        SpecError: unknown rule; a custom shift without an object-free caption under ``reference``.
    """
    from .shifts import get_shift

    shift = get_shift(shift)
    if _check_rule(rule) == "reference":
        if shift.group != "none" and not shift.caption:
            raise SpecError(f"shift {shift.id!r} has no object-free caption for the reference CLIP rule; give the "
                            "Shift a caption= or use rule='token-gain'")
        return f"a photo of a {name}", (shift.caption if shift.group != "none" else None)
    word = token or name
    return f"a photo of a {word}", (None if shift.group == "none" else shift.prompt(word))


# ---------------------------------------------------------------------- thresholds and the keep rule
def keep_mask(object_score, shift_score, object_threshold: float = OBJECT_THRESHOLD,
              shift_threshold=None, **deprecated_names) -> np.ndarray:
    """The keep rule: object present, and (for shifted samples: ``shift_score`` not nan) the shift present.

    ``shift_threshold`` may be one number or one per sample (per-shift thresholds); it defaults
    to the token-gain rule's margin (0.0) and ``shift_margin`` is its deprecated name.
    """
    shift_threshold = renamed(deprecated_names, "shift_margin", "shift_threshold", shift_threshold,
                              where="keep_mask: ")
    reject_unknown(deprecated_names, "keep_mask")
    if shift_threshold is None:
        shift_threshold = SHIFT_MARGIN
    object_score = np.asarray(object_score, dtype=np.float32)
    shift_score = np.asarray(shift_score, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        shift_ok = np.isnan(shift_score) | (shift_score >= np.asarray(shift_threshold, dtype=np.float32))
    return (object_score >= object_threshold) & shift_ok


@dataclass(frozen=True, eq=False)
class Thresholds:
    """The numbers of a keep rule.

    Attributes:
        rule: ``"reference"`` or ``"token-gain"``: what the scores are.
        object: the object threshold.
        shift: the shift threshold for every shift without its own.
        per_shift: shift id -> its own shift threshold (from a per-shift calibration).
        source: ``"placeholder"`` (the defaults, not calibrated), ``"user"`` or the calibration file.
    """

    rule: str = DEFAULT_RULE
    object: float = OBJECT_THRESHOLD
    shift: float | None = None
    per_shift: Mapping[str, float] = field(default_factory=dict)
    source: str = "placeholder"

    def __post_init__(self) -> None:
        _check_rule(self.rule)
        if self.shift is None:
            object.__setattr__(self, "shift", SHIFT_THRESHOLDS[self.rule])
        for what, value in [("object", self.object), ("shift", self.shift), *self.per_shift.items()]:
            check_finite_float(value, f"threshold {what}")

    def for_shift(self, shift_id: str) -> float:
        return float(self.per_shift.get(shift_id, self.shift))

    def keep(self, object_score, shift_score, shift_ids: Sequence[str]) -> np.ndarray:
        """Apply the rule; ``shift_ids`` (one per sample) pick per-shift thresholds."""
        per_sample = np.array([self.for_shift(s) for s in shift_ids], dtype=np.float32) if self.per_shift \
            else self.shift
        return keep_mask(object_score, shift_score, self.object, per_sample)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "object_threshold": float(self.object), "shift_threshold": float(self.shift),
                "per_shift": {k: float(v) for k, v in self.per_shift.items()}, "source": self.source,
                "calibrated": self.source not in ("placeholder", "user")}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Thresholds:
        """Read the thresholds of a calibration JSON (``dsi-bench clip-calibrate --out``).

        Raises:
            SpecError: unreadable file or no thresholds in it.
        """
        import json
        from pathlib import Path

        path = Path(path).expanduser()
        try:
            doc = json.loads(path.read_text())
            t = doc["thresholds"]
            return cls(rule=t["rule"], object=float(t["object_threshold"]), shift=float(t["shift_threshold"]),
                       per_shift={k: float(v) for k, v in t.get("per_shift", {}).items()}, source=str(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpecError(f"{str(path)!r} is not a CLIP calibration file ({type(e).__name__}: {e}); write one with "
                            "dsi-bench clip-calibrate RELEASE --masks masks.npy --out FILE") from e


def world_thresholds(clip="world"):
    """The calibrated thresholds that ship with the world's CLIP (fitted by ``dsi-bench world train``)."""
    from pathlib import Path

    return Path(resolve_world(clip, "clip")) / "thresholds.json"


def _thresholds(rule: str, thresholds, object_threshold, shift_threshold) -> Thresholds:
    """Defaults of the rule, or a calibration (file or object); explicit numbers override either."""
    _check_rule(rule)
    if thresholds is None:
        base = Thresholds(rule)
    elif isinstance(thresholds, Thresholds):
        base = thresholds
    else:
        base = Thresholds.load(thresholds)
    if base.rule != rule:
        raise SpecError(f"the thresholds in {base.source!r} are for rule {base.rule!r}, not {rule!r}; pass "
                        f"rule={base.rule!r} (--rule {base.rule}) or thresholds fitted for {rule!r}")
    if object_threshold is None and shift_threshold is None:
        return base
    return Thresholds(rule, base.object if object_threshold is None else float(object_threshold),
                      base.shift if shift_threshold is None else float(shift_threshold),
                      base.per_shift if shift_threshold is None else {},
                      "user" if base.source == "placeholder" else f"{base.source} (overridden)")


# ---------------------------------------------------------------------- scoring a stream of samples
def _check_tokens_for_rule(rule: str, bank) -> None:
    if rule == "reference" and bank is not None:
        raise SpecError("the reference CLIP rule scores class names, so tokens are not used; drop tokens= (--tokens) "
                        "or pass rule='token-gain' (--rule token-gain)")


def _score_items(items, *, rule, chunk, scorer_args, bar) -> dict:
    """Score an iterable of ``(key, shift_id, load_image, name, token)`` in chunks.

    Returns ``{"keys", "shifts", "object_score", "shift_score", "text"}``; ``shift_score`` is the
    rule's shift statistic (nan for base).
    """
    from concurrent.futures import ThreadPoolExecutor

    keys, shifts, objects, stats = [], [], [], []
    text_mode = None
    batch: list = []

    def flush(pool):
        nonlocal text_mode
        if not batch:
            return
        images = list(pool.map(lambda it: it[2](), batch))  # JPEG decoding releases the GIL
        texts = [rule_captions(rule, s, name, token) for _, s, _, name, token in batch]
        out = clip_scores(images, [t[0] for t in texts], [t[1] for t in texts], **scorer_args)
        text_mode = out["text"]
        keys.extend(it[0] for it in batch)
        shifts.extend(it[1] for it in batch)
        objects.append(out["object_score"])
        stats.append(out["shift_gain"] if rule == "token-gain" else out["shift_score"])
        bar.update(len(batch))
        batch.clear()

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for item in items:
            batch.append(item)
            if len(batch) >= chunk:
                flush(pool)
        flush(pool)
    empty = np.zeros(0, np.float32)
    return {"keys": keys, "shifts": shifts, "object_score": np.concatenate(objects) if objects else empty,
            "shift_score": np.concatenate(stats) if stats else empty, "text": text_mode}


def _save_scores(path, scored: dict, keep: np.ndarray, settings: dict) -> None:
    import io
    import json

    from .files import atomic_write

    arrays = {"keys": np.array(scored["keys"], dtype=str), "object_score": scored["object_score"],
              "shift_score": scored["shift_score"], "keep": keep, "settings": np.array(json.dumps(settings))}
    if settings["rule"] == "token-gain":
        arrays["shift_gain"] = scored["shift_score"]  # its 0.1 name
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def clip_filter_shards(root, *, clip: str = DEFAULT_CLIP, rule: str = DEFAULT_RULE, tokens=None,
                       use_tokens: bool | None = None, shifts=None, thresholds=None,
                       object_threshold: float | None = None, shift_threshold: float | None = None,
                       class_list=None, device: str = "cpu", dtype=None, batch_size: int = 32,
                       scores_out=None, masks_out=None, progress: bool = True, **deprecated_names) -> dict:
    """Score every sample of a shard folder; write a keyed scores sidecar and a keyed masks file.

    Texts per sample (see :func:`rule_captions`): the class name comes from ``class_list`` when
    given, else from the sample's metadata (``class_name``); the shift's caption and template
    come from the catalog by shift id (converted release shards record neither), or for a custom
    shift from the metadata's ``shift_template``; ``token-gain``'s token is the metadata's or the
    bank's token for the class.

    Args:
        root: the shard folder.
        rule: ``"reference"`` (default) or ``"token-gain"``; ``tokens`` only with ``token-gain``.
        thresholds: a calibration file (``clip-calibrate --out``) or :class:`Thresholds`; default:
            the rule's placeholder thresholds (with ``clip="world"``: the world CLIP's calibrated ones).
            ``object_threshold``/``shift_threshold`` override it (``shift_margin`` is the deprecated
            name of ``shift_threshold``).
        device, dtype: where and in which precision CLIP runs.

    Outputs default to ``ROOT/clip_scores.npz`` (``keys``, ``object_score``, ``shift_score``,
    ``keep`` and ``settings``: the rule, its thresholds, the model, the text mode) and
    ``ROOT/clip_masks.npz`` (the keyed masks that ``ShiftedImageNet(masks=...)`` and
    ``evaluate(masks=...)`` take, with the same ``settings``). ``model``, ``scores_path`` and
    ``masks_path`` are deprecated names of ``clip``, ``scores_out`` and ``masks_out``.

    Returns:
        ``{"scores": path, "masks": path, "kept": {shift: (kept, n)}, "text": ..., "rule": ...,
        "thresholds": {...}}``.

    Raises:
        SpecError: unknown rule, tokens with the reference rule, bad thresholds.
    """
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from .images import decode_image
    from .masks import Masks
    from .shards import ShardSet, _image_member
    from .shifts import get_shift
    from .tokens import load_tokens
    from .version import __version__

    clip = renamed(deprecated_names, "model", "clip", clip, default=DEFAULT_CLIP, where="clip_filter_shards: ")
    scores_out = renamed(deprecated_names, "scores_path", "scores_out", scores_out, where="clip_filter_shards: ")
    masks_out = renamed(deprecated_names, "masks_path", "masks_out", masks_out, where="clip_filter_shards: ")
    shift_threshold = renamed(deprecated_names, "shift_margin", "shift_threshold", shift_threshold,
                              where="clip_filter_shards: ")
    reject_unknown(deprecated_names, "clip_filter_shards")
    if thresholds is None and rule == "reference" and is_world(clip):
        thresholds = world_thresholds(clip)
    limits = _thresholds(rule, thresholds, object_threshold, shift_threshold)
    bank = load_tokens(tokens) if tokens is not None and not hasattr(tokens, "fingerprint") else tokens
    _check_tokens_for_rule(rule, bank)
    shardset = ShardSet(root)
    shift_ids = list(shifts) if shifts else shardset.shifts
    local = Path(str(root))
    scores_path = check_writable(scores_out or local / "clip_scores.npz", "scores file")  # before scoring
    masks_path = check_writable(masks_out or local / "clip_masks.npz", "masks file")

    resolved: dict[str, object] = {}

    def shift_of(shift_id: str, meta: dict):
        if shift_id not in resolved:
            if _is_catalog(shift_id):  # by id: converted release shards record no template
                resolved[shift_id] = get_shift(shift_id)
            elif meta.get("shift_template"):
                resolved[shift_id] = get_shift(meta["shift_template"])
            else:
                raise SpecError(f"shift {shift_id!r} of {str(root)!r} is not in the catalog and its samples record no "
                                "shift_template, so there is no text to score the shift with")
        return resolved[shift_id]

    def samples():
        for shift_id in shift_ids:
            for record in shardset.shards(shift_id):
                for sample in shardset.iter_shard(record):
                    meta = json.loads(sample["json"]) if "json" in sample else {}
                    c = meta.get("class_index")
                    name = class_list[c].name if class_list is not None and c is not None else meta.get("class_name")
                    if name is None:
                        raise SpecError(f"sample {sample['__key__']!r} records no class name; pass class_list=")
                    token = None
                    if bank is not None:
                        token = meta.get("token") or (bank.token_for(c) if c is not None and c in bank else None)
                    ext, data = _image_member(sample)
                    yield (sample["__key__"], shift_of(shift_id, meta), (lambda d=data, e=ext: decode_image(d, ext=e)),
                           name, token)

    total = sum(r["samples"] for r in shardset.records if r["shift"] in shift_ids)
    scorer_args = dict(clip=clip, tokens=bank, use_tokens=use_tokens, device=device, dtype=dtype,
                       batch_size=batch_size)
    with tqdm(total=total, desc="clip-filter", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        scored = _score_items(samples(), rule=rule, chunk=max(batch_size, 256), scorer_args=scorer_args, bar=bar)
    scored["shifts"] = [s.id for s in scored["shifts"]]
    keep = limits.keep(scored["object_score"], scored["shift_score"], scored["shifts"])
    kept: dict[str, tuple[int, int]] = {}
    for s, k in zip(scored["shifts"], keep.tolist()):
        a, n = kept.get(s, (0, 0))
        kept[s] = (a + int(k), n + 1)
    settings = {"model": clip, "text": scored["text"], "rule": rule, **CLIP_RULES[rule],
                "keep": "object_score >= object_threshold and (base or shift_score >= shift_threshold)",
                "thresholds": limits.to_dict(), "object_threshold": limits.object, "dtype": str(dtype),
                "package_version": __version__}
    _save_scores(scores_path, scored, keep, settings)
    Masks.from_keyed(scored["keys"], keep, str(masks_path)).save(masks_path, settings=settings)
    return {"scores": scores_path, "masks": masks_path, "kept": kept, "text": scored["text"], "rule": rule,
            "thresholds": limits.to_dict()}


def _is_catalog(shift_id: str) -> bool:
    from .shifts import list_shifts

    return shift_id in {s.id for s in list_shifts()}


# ---------------------------------------------------------------------- calibration against the release's masks
def _best_cut(x: np.ndarray, y: np.ndarray, gate: np.ndarray) -> tuple[float | None, int]:
    """The threshold ``t`` that maximises agreement of ``gate & (x >= t)`` with ``y``.

    Cuts are midpoints between neighbouring distinct values (so a gap in the scores gives a
    threshold inside it), or just outside the range (keep all / keep none). Returns ``(t, agreeing
    count)``; ``t`` is ``None`` when no sample passes the gate.
    """
    fixed = int(np.sum(~gate & ~y))  # gated-out samples are dropped whatever t is
    xs, ys = x[gate], y[gate]
    if len(xs) == 0:
        return None, fixed
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order].astype(np.float64), ys[order]
    n = len(xs)
    dropped_right = np.concatenate([[0], np.cumsum(~ys)])  # cut k drops xs[:k]: agreeing drops
    kept_right = int(ys.sum()) - np.concatenate([[0], np.cumsum(ys)])  # and keeps xs[k:]: agreeing keeps
    agree = dropped_right + kept_right
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = xs[1:] > xs[:-1]
    agree = np.where(valid, agree, -1)
    k = int(np.argmax(agree))
    if k == 0:
        t = xs[0] - 1e-3
    elif k == n:
        t = xs[-1] + 1e-3
    else:
        t = (xs[k - 1] + xs[k]) / 2
    return float(t), int(agree[k]) + fixed


def _agreement(keep: np.ndarray, released: np.ndarray) -> dict:
    n = len(keep)
    return {"n": n, "accuracy": float(np.mean(keep == released)) if n else None,
            "kept_fitted": int(keep.sum()), "kept_released": int(released.sum()),
            "kept_by_fit_only": int(np.sum(keep & ~released)), "dropped_by_fit_only": int(np.sum(~keep & released))}


@dataclass(frozen=True)
class Calibration:
    """Thresholds fitted to reproduce released masks, and how well they do.

    Attributes:
        thresholds: the fitted :class:`Thresholds` (of the chosen mode).
        mode: ``"global"`` (one shift threshold) or ``"per-shift"``.
        agreement: shift id -> ``{"n", "accuracy", "kept_fitted", "kept_released", "kept_by_fit_only",
            "dropped_by_fit_only"}`` under the fitted thresholds, plus ``"all"``.
        alternatives: the other mode's fit (``{"thresholds": ..., "accuracy": ...}``), for comparison.
        settings: what was scored and how (model, rule, dtype, release, masks, ...).
    """

    thresholds: Thresholds
    mode: str
    agreement: dict
    alternatives: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.agreement["all"]["accuracy"]

    def to_dict(self) -> dict:
        return {"thresholds": self.thresholds.to_dict(), "mode": self.mode, "agreement": self.agreement,
                "alternatives": self.alternatives, "settings": self.settings}


def _fit(obj, stat, shifts, released, is_base, mode, max_rounds=50):
    """Coordinate ascent: the object threshold given the shift thresholds, then each shift threshold
    given the object threshold, until nothing moves. Each step is an exact 1-d search."""
    groups = {"*": ~is_base} if mode == "global" else {s: (shifts == s) for s in np.unique(shifts[~is_base])}
    # start from the base samples alone: there the object test is the whole rule
    t_obj, _ = _best_cut(obj[is_base] if is_base.any() else obj, released[is_base] if is_base.any() else released,
                         np.ones(int(is_base.sum()) if is_base.any() else len(obj), dtype=bool))
    t_obj = 0.0 if t_obj is None else t_obj
    t_shift = {g: 0.0 for g in groups}
    for _ in range(max_rounds):
        before = (t_obj, dict(t_shift))
        for g, rows in groups.items():
            t, _ = _best_cut(stat[rows], released[rows], obj[rows] >= t_obj)
            t_shift[g] = t_shift[g] if t is None else t
        per_row = np.zeros(len(obj), dtype=np.float64)
        for g, rows in groups.items():
            per_row[rows] = t_shift[g]
        shift_ok = is_base | (np.nan_to_num(stat, nan=-np.inf) >= per_row)
        t, _ = _best_cut(obj, released, shift_ok)
        t_obj = t_obj if t is None else t
        if (t_obj, t_shift) == before:
            break
    return t_obj, t_shift


def fit_thresholds(object_score, shift_score, shift_ids, released, *, rule: str = DEFAULT_RULE,
                   mode: str = "global") -> Calibration:
    """Fit the keep rule's thresholds that best reproduce released keep flags (a pure function).

    The rule is ``object_score >= t_object and (base or shift_score >= t_shift)``. Both modes
    share one object threshold (the object text has the same form in every shift, and base,
    where only the object is tested, pins it). ``"global"`` (default) fits one shift threshold for
    all shifts: two numbers fitted on up to 1.2 M flags cannot overfit, so its agreement tests
    whether the rule *is* the release's, and it carries over to new shifts. ``"per-shift"``
    fits one per shift; it can absorb differences between caption wordings, which also hides a
    wrong rule, so it is reported beside the global fit (``alternatives``) as a diagnostic.

    Args:
        object_score, shift_score: per sample (``shift_score`` nan for base samples).
        shift_ids: per sample, its shift id.
        released: per sample, the released keep flag.
        rule: the rule the scores belong to (recorded in the thresholds).
        mode: ``"global"`` or ``"per-shift"``.

    Returns:
        A :class:`Calibration` (``settings`` empty: the caller adds what was scored).

    Raises:
        SpecError: unknown mode or rule, arrays of different lengths, a shifted sample without a shift score.
    """
    _check_rule(rule)
    if mode not in FIT_MODES:
        raise SpecError(f"calibration mode {mode!r} must be one of {', '.join(FIT_MODES)}")
    obj = np.asarray(object_score, dtype=np.float64)
    stat = np.asarray(shift_score, dtype=np.float64)
    shifts = np.asarray(shift_ids, dtype=str)
    released = np.asarray(released, dtype=bool)
    if not (len(obj) == len(stat) == len(shifts) == len(released)):
        raise SpecError(f"scores and masks differ in length ({len(obj)}, {len(stat)}, {len(shifts)}, {len(released)})")
    if len(obj) == 0:
        raise SpecError("no scored samples to fit thresholds on")
    is_base = np.isnan(stat)
    wrong = np.unique(shifts[is_base & (shifts != "base")])
    if len(wrong):
        raise SpecError(f"shift(s) {', '.join(wrong[:3])} have samples without a shift score; score them with a "
                        "shift caption")
    fits = {}
    for m in FIT_MODES:
        t_obj, t_shift = _fit(obj, stat, shifts, released, is_base, m)
        if m == "global":
            th = Thresholds(rule, t_obj, t_shift.get("*", SHIFT_THRESHOLDS[rule]), {}, "calibration")
        else:
            th = Thresholds(rule, t_obj, float(np.median(list(t_shift.values()))) if t_shift else
                            SHIFT_THRESHOLDS[rule], {str(k): float(v) for k, v in t_shift.items()}, "calibration")
        keep = th.keep(obj, stat, shifts)
        agreement = {str(s): _agreement(keep[shifts == s], released[shifts == s]) for s in dict.fromkeys(shifts)}
        agreement["all"] = _agreement(keep, released)
        fits[m] = (th, agreement)
    chosen, agreement = fits[mode]
    other = {m: {"thresholds": th.to_dict(), "accuracy": ag["all"]["accuracy"],
                 "accuracy_per_shift": {s: a["accuracy"] for s, a in ag.items() if s != "all"}}
             for m, (th, ag) in fits.items() if m != mode}
    return Calibration(chosen, mode, agreement, other)


def calibrate_thresholds(root, masks, *, shifts=None, classes=None, class_list=None, missing: str = "error",
                         rule: str = DEFAULT_RULE, mode: str = "global", clip: str = DEFAULT_CLIP, tokens=None,
                         device: str = "cpu", dtype=None, batch_size: int = 32, out=None, scores_out=None,
                         progress: bool = True) -> Calibration:
    """Score the ImageNet* release with CLIP and fit the thresholds that best reproduce its masks.

    The release does not publish how its ``masks.npy`` was thresholded. This scores every image of
    the chosen shifts (read in place, as ``source="imagenet-star"`` does) with ``rule``'s texts,
    binds the release's masks to the files by key, and fits :func:`fit_thresholds`. A user with
    the release and a GPU runs it once (``dsi-bench clip-calibrate RELEASE --masks masks.npy
    --device cuda``); the measured thresholds then become the documented defaults.

    Args:
        root: the release (a folder of ``{shift}.zip`` or shift folders).
        masks: the release's ``masks.npy`` (read by the restricted loader, never unpickled freely),
            its ``.npz``, or a :class:`~dsi_bench.masks.Masks`.
        shifts: shift ids (default: every shift present in both the release and the masks).
        classes: class selection (default: all 1000); ``class_list``: the classes (default ImageNet's).
        missing: ``"error"`` or ``"skip"`` for files missing from the copy (masks stay bound by key).
        rule, mode: see :func:`fit_thresholds`; ``tokens`` (the release's bank) only with ``token-gain``.
        device, dtype, batch_size: how CLIP runs.
        out: write the calibration JSON here; ``scores_out``: write the scores (``.npz``) here.

    Returns:
        The :class:`Calibration`.

    Raises:
        ReleaseError, MaskError, SpecError: bad release, masks or options.
    """
    import json

    from tqdm.auto import tqdm

    from .classes import imagenet_classes
    from .errors import MaskError
    from .files import atomic_write
    from .masks import Masks, resolve_masks
    from .release import ReleaseSet, release_shifts
    from .shifts import get_shift
    from .tokens import load_tokens
    from .version import __version__

    _check_rule(rule)
    if mode not in FIT_MODES:
        raise SpecError(f"calibration mode {mode!r} must be one of {', '.join(FIT_MODES)}")
    released = masks if isinstance(masks, Masks) else resolve_masks(masks)
    if released is None:
        raise MaskError("calibration needs the release's masks: pass masks=PATH (--masks masks.npy)")
    bank = load_tokens(tokens) if tokens is not None and not hasattr(tokens, "fingerprint") else tokens
    _check_tokens_for_rule(rule, bank)
    if rule == "token-gain" and bank is None:
        raise SpecError("the token-gain rule scores learned tokens: pass tokens= (--tokens tokens.zip)")
    class_list = class_list or imagenet_classes()
    indices = None if classes is None else class_list.resolve(classes)
    for path, what in ((out, "calibration file"), (scores_out, "scores file")):
        if path is not None:
            check_writable(path, what)  # before scoring
    if shifts:
        shift_ids = [get_shift(s).id for s in shifts]
    else:
        shift_ids = [s for s in release_shifts(root) if s in released.shifts()]
        if not shift_ids:
            raise MaskError(f"no shift of the release at {str(root)!r} has masks in {released.source!r}")
    for s in shift_ids:
        released.check_shift(s)
    sets = [ReleaseSet(root, s, class_list, indices, missing) for s in shift_ids]

    def items():
        for store in sets:
            shift = get_shift(store.shift_id)
            for e in store.entries:
                token = bank.token_for(e.label) if bank is not None else None
                yield e.key, shift, (lambda st=store, en=e: st.load_image(en)), class_list[e.label].name, token

    scorer_args = dict(clip=clip, tokens=bank, use_tokens=True if bank is not None else None, device=device,
                       dtype=dtype, batch_size=batch_size)
    total = sum(len(s.entries) for s in sets)
    with tqdm(total=total, desc="clip-calibrate", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        scored = _score_items(items(), rule=rule, chunk=max(batch_size, 256), scorer_args=scorer_args, bar=bar)
    scored["shifts"] = [s.id for s in scored["shifts"]]
    flags = [released.get(k) for k in scored["keys"]]
    unmatched = [k for k, f in zip(scored["keys"], flags) if f is None]
    if unmatched:
        raise MaskError(f"the masks in {released.source!r} say nothing about {len(unmatched)} scored files "
                        f"(e.g. {unmatched[0]}); pass the release's masks.npy")
    fitted = fit_thresholds(scored["object_score"], scored["shift_score"], scored["shifts"],
                            np.array(flags, dtype=bool), rule=rule, mode=mode)
    settings = {"model": clip, "text": scored["text"], "rule": rule, **CLIP_RULES[rule], "dtype": str(dtype),
                "device": str(device), "release": str(root), "masks": str(released.source), "shifts": shift_ids,
                "classes": len(indices) if indices is not None else len(class_list),
                "missing_files": sum(sum(len(v) for v in s.missing.values()) for s in sets),
                "class_names": "class list names", "package_version": __version__}
    th = fitted.thresholds
    if out is not None:
        th = Thresholds(th.rule, th.object, th.shift, th.per_shift, str(out))
    calibration = Calibration(th, fitted.mode, fitted.agreement, fitted.alternatives, settings)
    if scores_out is not None:
        keep = th.keep(scored["object_score"], scored["shift_score"], scored["shifts"])
        _save_scores(scores_out, scored, keep, {**settings, "thresholds": th.to_dict()})
    if out is not None:
        atomic_write(out, (json.dumps(calibration.to_dict(), indent=2) + "\n").encode())
    return calibration
