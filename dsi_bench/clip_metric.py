"""The CLIP metric: is the object there, and is the shift there? Scores and keep/drop masks.

For an image generated from prompt ``shift.prompt(token)`` of class ``c``:

* ``object_score`` = cos(image, "a photo of a <token>"), the class's base prompt;
* ``shift_gain`` = cos(image, the full shifted prompt) - cos(image, the base prompt): how much
  better the image matches the shifted description than the plain one (``None`` for ``base``).

**Rule** (our choice; the release does not publish how its masks were thresholded): keep a
sample when ``object_score >= object_threshold`` (default 0.20) and, for shifted samples,
``shift_gain >= shift_margin`` (default 0.0). Both are parameters.

Text: the default CLIP, ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, is the OpenCLIP model whose
text tower SD2 uses, so a bank learned on SD2 is injected into CLIP's tokenizer and scored
directly. With a CLIP whose text width differs from the bank's, class names are used instead
(and the result says so); asking for tokens then (``use_tokens=True``) is an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .compat import reject_unknown, renamed
from .errors import ModelLoadError, OfflineError, TokenBankError
from .memo import Memo

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_CLIP", "ClipScorer", "clip_filter_shards", "clip_scores", "keep_mask"]

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OBJECT_THRESHOLD = 0.20
SHIFT_MARGIN = 0.0

#: CLIP models loaded in this process (a ViT-H is 4 GB: keep few).
_CACHE = Memo("CLIP models", 2)


class ClipScorer:
    """A CLIP model loaded once per process (per model, device, dtype, token bank)."""

    def __init__(self, model: str = DEFAULT_CLIP, *, tokens=None, use_tokens: bool | None = None,
                 device: str = "cpu", dtype: str | None = None, batch_size: int = 32):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        from .online import hub_unreachable
        from .pipeline import resolve_device

        self.device = resolve_device(device, check=True)
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, None: torch.float32,
                      "float32": torch.float32}[dtype]
        self.batch_size = batch_size
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
                               "(hf download ORG/NAME --local-dir DIR) and pass clip=DIR (--clip DIR)") from e
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
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.processor.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                                 return_tensors="pt").to(self.device)
                f = self.model.get_text_features(**batch)
                f = getattr(f, "pooler_output", f)
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
    key = (str(model), None if tokens is None else tokens.fingerprint, use_tokens, device, dtype, batch_size)
    return _CACHE.get_or_create(key, lambda: ClipScorer(model, tokens=tokens, use_tokens=use_tokens, device=device,
                                                         dtype=dtype, batch_size=batch_size))


def clip_scores(images: Sequence, class_prompts: Sequence[str], shift_prompts: Sequence[str | None], *,
                clip: str = DEFAULT_CLIP, tokens=None, use_tokens: bool | None = None, device: str = "cpu",
                dtype: str | None = None, batch_size: int = 32, **deprecated_names) -> dict:
    """CLIP similarities of each image with its class's base prompt and its shifted prompt.

    Args:
        images: PIL images.
        class_prompts: per image, the base prompt (``"a photo of a <token>"`` or with the class name).
        shift_prompts: per image, the full shifted prompt, or ``None`` for base samples.
        clip: the CLIP model, a transformers folder or Hub id (``model=`` is its deprecated name).
        tokens: the bank the prompts' tokens come from (injected when CLIP's text width matches).

    Returns:
        ``{"object_score": array, "shift_gain": array (nan for base), "text": "learned tokens"|"class names",
        "model": name}``. Deterministic for a given model, device and dtype.
    """
    clip = renamed(deprecated_names, "model", "clip", clip, default=DEFAULT_CLIP, where="clip_scores: ")
    reject_unknown(deprecated_names, "clip_scores")
    if not (len(images) == len(class_prompts) == len(shift_prompts)):
        raise ValueError("images, class_prompts and shift_prompts must have the same length")
    scorer = _scorer(clip, tokens, use_tokens, device, dtype, batch_size)
    img = scorer.image_features(images)
    base_text = scorer.text_features(class_prompts)
    object_score = (img * base_text).sum(-1).cpu().numpy()
    gain = np.full(len(images), np.nan, dtype=np.float32)
    shifted = [i for i, p in enumerate(shift_prompts) if p]
    if shifted:
        shift_text = scorer.text_features([shift_prompts[i] for i in shifted])
        full = (img[shifted] * shift_text).sum(-1).cpu().numpy()
        gain[shifted] = full - object_score[shifted]
    return {"object_score": object_score.astype(np.float32), "shift_gain": gain, "text": scorer.text_mode,
            "model": scorer.model_name}


def keep_mask(object_score, shift_gain, object_threshold: float = OBJECT_THRESHOLD,
              shift_margin: float = SHIFT_MARGIN) -> np.ndarray:
    """The documented rule: object present, and (for shifted samples) the shift present."""
    object_score = np.asarray(object_score, dtype=np.float32)
    shift_gain = np.asarray(shift_gain, dtype=np.float32)
    shift_ok = np.isnan(shift_gain) | (shift_gain >= shift_margin)
    return (object_score >= object_threshold) & shift_ok


def clip_filter_shards(root, *, clip: str = DEFAULT_CLIP, tokens=None, use_tokens: bool | None = None,
                       shifts=None, object_threshold: float = OBJECT_THRESHOLD, shift_margin: float = SHIFT_MARGIN,
                       device: str = "cpu", dtype: str | None = None, batch_size: int = 32,
                       scores_out=None, masks_out=None, progress: bool = True, **deprecated_names) -> dict:
    """Score every sample of a shard folder; write a keyed scores sidecar and a keyed masks file.

    The prompts come from each sample's metadata (``prompt``, ``token``, ``shift_template``);
    without a bank, class names replace the tokens. Outputs default to ``ROOT/clip_scores.npz``
    (``keys``, ``object_score``, ``shift_gain`` and the settings) and ``ROOT/clip_masks.npz`` (the
    keyed masks that ``ShiftedImageNet(masks=...)`` and ``evaluate(masks=...)`` take); ``scores_out`` and
    ``masks_out`` choose other paths. ``model``, ``scores_path`` and ``masks_path`` are deprecated names
    of ``clip``, ``scores_out`` and ``masks_out``.

    Returns:
        ``{"scores": path, "masks": path, "kept": {shift: (kept, n)}, "text": ...}``.
    """
    import io
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from .files import atomic_write
    from .images import decode_image
    from .masks import Masks
    from .shards import ShardSet, _image_member
    from .shifts import TOKEN
    from .tokens import load_tokens

    clip = renamed(deprecated_names, "model", "clip", clip, default=DEFAULT_CLIP, where="clip_filter_shards: ")
    scores_out = renamed(deprecated_names, "scores_path", "scores_out", scores_out, where="clip_filter_shards: ")
    masks_out = renamed(deprecated_names, "masks_path", "masks_out", masks_out, where="clip_filter_shards: ")
    reject_unknown(deprecated_names, "clip_filter_shards")
    shardset = ShardSet(root)
    bank = load_tokens(tokens) if tokens is not None and not hasattr(tokens, "fingerprint") else tokens
    shift_ids = list(shifts) if shifts else shardset.shifts
    keys, objects, gains = [], [], []
    text_mode = None
    total = sum(r["samples"] for r in shardset.records if r["shift"] in shift_ids)
    with tqdm(total=total, desc="clip-filter", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        spans = {}
        for shift_id in shift_ids:
            start = len(keys)
            for record in shardset.shards(shift_id):
                images, base_p, shift_p = [], [], []
                for sample in shardset.iter_shard(record):
                    meta = json.loads(sample["json"]) if "json" in sample else {}
                    images.append(decode_image(_image_member(sample)[1]))
                    name = meta.get("token") if (bank is not None and meta.get("token")) else meta.get("class_name")
                    template = meta.get("shift_template") or "a photo of a " + TOKEN
                    base_p.append(f"a photo of a {name}")
                    shift_p.append(None if shift_id == "base" else template.replace(TOKEN, str(name)))
                    keys.append(sample["__key__"])
                out = clip_scores(images, base_p, shift_p, clip=clip, tokens=bank, use_tokens=use_tokens,
                                  device=device, dtype=dtype, batch_size=batch_size)
                text_mode = out["text"]
                objects.append(out["object_score"])
                gains.append(out["shift_gain"])
                bar.update(len(images))
            spans[shift_id] = (start, len(keys))
    object_score = np.concatenate(objects) if objects else np.zeros(0, np.float32)
    shift_gain = np.concatenate(gains) if gains else np.zeros(0, np.float32)
    keep = keep_mask(object_score, shift_gain, object_threshold, shift_margin)
    kept = {s: (int(keep[a:b].sum()), b - a) for s, (a, b) in spans.items()}
    local = Path(str(root))
    scores_path = Path(scores_out) if scores_out else local / "clip_scores.npz"
    masks_path = Path(masks_out) if masks_out else local / "clip_masks.npz"
    buf = io.BytesIO()
    settings = json.dumps({"model": clip, "text": text_mode, "object_threshold": object_threshold,
                           "shift_margin": shift_margin, "rule": "object_score >= object_threshold and "
                           "(base or shift_gain >= shift_margin)"})
    np.savez(buf, keys=np.array(keys), object_score=object_score, shift_gain=shift_gain, keep=keep,
             settings=np.array(settings))
    atomic_write(scores_path, buf.getvalue())
    Masks.from_keyed(keys, keep, str(masks_path)).save(masks_path)
    return {"scores": scores_path, "masks": masks_path, "kept": kept, "text": text_mode}
