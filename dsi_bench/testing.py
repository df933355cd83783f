"""Tiny real components for tests, benchmarks and the offline demo.

Everything here is built in-process from real library classes with tiny configs
(diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` / ``EulerDiscreteScheduler``,
transformers ``CLIPTextModel`` / ``CLIPTokenizer``), saved in the standard diffusers
folder layout and loaded back through the same ``from_pretrained`` path users take.
Weights are random: the images are noise-like, but every code path is the real one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from transformers import CLIPTokenizer

    from .classes import ClassList

__all__ = [
    "FAKE_WNIDS",
    "SD2_SCHEDULER_CONFIG",
    "disk_full_on_call",
    "fake_imagenet_classes",
    "make_fake_release",
    "oracle_classifier",
    "tiny_classifier",
    "TINY_CROSS_ATTENTION_DIM",
    "build_tiny_tokenizer",
    "save_tiny_clip",
    "save_tiny_pipeline",
    "save_tiny_tokens",
]

#: Stable Diffusion 2's noise schedule (v-prediction), shared by the tiny and full-size test models.
SD2_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    steps_offset=1,
)

#: Width of the tiny text encoder, hence the embedding size of tokens that fit it.
TINY_CROSS_ATTENTION_DIM = 32

# CLIP's own pre-tokenisation regex (the one transformers' CLIPTokenizer installs).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _tokenizer_corpus() -> list[str]:
    """Words the tiny vocabulary should know: prompts, shift phrases and class names."""
    from .classes import imagenet_class_table
    from .shifts import list_shifts

    lines = [shift.prompt("object") for shift in list_shifts()]
    # torchvision's category names, as when the vocabulary was first built: the tiny tokenizer (and
    # with it every tiny model's pixels, tests/golden) stays the same now that class names are the
    # release's common names; any text still tokenizes (byte fallback).
    lines += [row["torchvision_name"] for row in imagenet_class_table()]
    lines += ["a photo of a", "a rendering of a", "a cropped photo of the", "a painting of a"]
    return lines


def build_tiny_tokenizer(vocab_size: int | None = 1000, corpus: list[str] | None = None) -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` with a small byte-level BPE vocabulary, built deterministically.

    The vocabulary holds every byte symbol (with and without CLIP's ``</w>`` suffix), so any
    text tokenizes without unknown tokens. Merges spell out the corpus's words (prompts, shift
    phrases, class names; most frequent first, ties alphabetical) prefix by prefix. The
    ``tokenizers`` library's BPE trainer breaks ties in hash order, which made the tiny model
    differ from process to process; this construction is the same everywhere.

    Args:
        vocab_size: the most entries; ``None``: no limit, and every word of the corpus is one token.
        corpus: the lines whose words get merges (default: the catalog's prompts, shift phrases
            and torchvision's class names).
    """
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    counts: Counter = Counter()
    for line in _tokenizer_corpus() if corpus is None else corpus:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    vocab = {bos: 0, eos: 1}
    for symbol in alphabet + [a + "</w>" for a in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    merges, seen = [], set()
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            if vocab_size is not None and len(vocab) >= vocab_size:
                break
            pair = (current, symbol)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
                vocab.setdefault(current + symbol, len(vocab))
            current += symbol
    if vocab_size is None:
        # Merges of other words can pre-empt a word's own prefix merges (BPE applies the best-ranked
        # pair first), leaving it in pieces: join what is left with merges ranked after all others,
        # which cannot change a word already whole.
        ranks = {pair: i for i, pair in enumerate(merges)}
        for word in sorted(counts):
            while len(pieces := _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
                ranks[pieces[0], pieces[1]] = len(merges)
                merges.append((pieces[0], pieces[1]))
                vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _bpe(symbols: list[str], ranks: dict) -> list[str]:
    """Byte-pair encoding of one word: merge the best-ranked adjacent pair, everywhere, until none applies."""
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def save_tiny_pipeline(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion pipeline in the diffusers folder layout.

    The components mirror SD2's structure at toy scale: a cross-attention UNet with
    linear projections, a KL autoencoder, a CLIP text encoder and tokenizer, and an
    ``EulerDiscreteScheduler`` with ``prediction_type="v_prediction"`` like SD2's.
    Its native generation size is 32 px. Load it with
    ``StableDiffusionPipeline.from_pretrained(path)`` or pass ``path`` as ``model=``.

    Args:
        path: destination folder (created).
        seed: seed of the random weights, so two calls give identical pipelines.

    Returns:
        The folder written.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    # Component constructors draw from the global generator: fork it so the caller's
    # random state is left as it was.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TINY_CROSS_ATTENTION_DIM,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=TINY_CROSS_ATTENTION_DIM,
                hidden_act="gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = EulerDiscreteScheduler(**SD2_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_tokens(
    path: str | os.PathLike,
    num_classes: int = 1000,
    *,
    dim: int = TINY_CROSS_ATTENTION_DIM,
    seed: int = 0,
    base_model: str = "dsi-bench/tiny-sd",
) -> Path:
    """Write a token bank (safetensors) of random class tokens that fits the tiny pipeline.

    Tokens are named like the ImageNet* release's (``<{name}-{index}>``) for the first
    ``num_classes`` ImageNet classes, and scaled to the norm of real CLIP token rows.

    Args:
        path: destination ``.safetensors`` file.
        num_classes: number of ImageNet classes (0..num_classes-1) to cover.
        dim: embedding width (the tiny text encoder's is 32).
        seed: seed of the random embeddings.
        base_model: the base model id recorded in the bank's metadata.

    Returns:
        The file written.
    """
    import torch

    from .classes import imagenet_classes
    from .tokens import TokenBank

    classes = imagenet_classes()[:num_classes]
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(classes), dim, generator=gen)
    emb = emb / emb.norm(dim=1, keepdim=True) * 0.4
    bank = TokenBank.from_embeddings(emb, classes, base_model=base_model)
    return bank.save(path)


#: The WordNet ids of ImageNet classes 0-2 (tench, goldfish, great white shark): fake releases use them.
FAKE_WNIDS = ("n01440764", "n01443537", "n01484850")


def make_fake_release(
    root: str | os.PathLike,
    shifts: Sequence[str] = ("base",),
    wnids: Sequence[str] = FAKE_WNIDS,
    per_class: int = 50,
    size: int = 64,
    as_zip: bool = True,
    pattern: bool = False,
) -> Path:
    """A folder laid out like the ImageNet* release: ``{shift}.zip`` (or folders) of
    ``{wnid}/{NN}.jpg``, small random JPEGs (deterministic).

    With ``pattern``, each image is one flat colour encoding what it is (see :func:`oracle_classifier`):
    red = 20 + 40 * class position, green = 10 + 4 * index, blue = 200 for shifts other than base.
    """
    import zipfile

    import numpy as np
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for shift in shifts:
        files = {}
        for wnid in wnids:
            for i in range(per_class):
                buf = io.BytesIO()
                if pattern:
                    colour = (20 + 40 * wnids.index(wnid), 10 + 4 * i, 0 if shift == "base" else 200)
                    pixels = np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3))
                else:
                    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                if pattern:  # lossless enough for flat colours: 4:4:4, quality 100
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=100, subsampling=0)
                else:
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                files[f"{shift}/{wnid}/{i:02d}.jpg"] = buf.getvalue()
        if as_zip:
            with zipfile.ZipFile(root / f"{shift}.zip", "w", zipfile.ZIP_STORED) as z:
                for name, data in files.items():
                    z.writestr(name, data)
        else:
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
    return root


def fake_imagenet_classes(wnids: Sequence[str] = FAKE_WNIDS) -> ClassList:
    """A 1000-class list whose first classes carry the given WordNet ids (the rest get
    sortable fake ids), so release folders map to indices without timm or a class table."""
    from .classes import ClassList, imagenet_classes

    names = imagenet_classes().names
    ids = list(wnids) + [f"n9{i:07d}" for i in range(len(wnids), len(names))]
    return ClassList.from_names(names, ids=ids, name="imagenet")


def tiny_classifier(num_classes: int = 1000, seed: int = 0, width: int = 8,
                    size: int = 32) -> tuple[torch.nn.Module, Callable]:
    """A small random CNN and its transform (``size`` px): a real ``nn.Module`` for tests and the demo."""
    import torch
    from torchvision import transforms as T

    with torch.random.fork_rng():  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        module = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(), torch.nn.Linear(width * 16, num_classes),
        )
    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return module.eval(), transform


def oracle_classifier() -> tuple[torch.nn.Module, Callable]:
    """A model that reads :func:`make_fake_release` pattern images (``ToTensor`` input, 1000 outputs).

    It is right unless ``index % 10 == 3``, or (blue images only: the shifts) ``index % 5 == 0``;
    when wrong it answers the next class. The true class is always its second choice. So on
    3 classes x 50 images: base top-1 = 135/150, a shift = 105/150, top-5 = 1, and 30 pairs flip.
    """
    import torch
    from torchvision import transforms as T

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_classes = 1000

        def forward(self, x):
            mean = x.float().mean(dim=(2, 3)) * 255
            cls = ((mean[:, 0] - 20) / 40).round().long()
            idx = ((mean[:, 1] - 10) / 4).round().long()
            shifted = mean[:, 2] > 100
            wrong = (idx % 10 == 3) | (shifted & (idx % 5 == 0))
            guess = torch.where(wrong, cls + 1, cls)
            logits = torch.zeros(x.shape[0], self.num_classes)
            rows = torch.arange(x.shape[0])
            logits[rows, cls] = 1.0
            logits[rows, guess] = 2.0
            return logits

    return Oracle(), T.ToTensor()


def save_tiny_clip(path: str | os.PathLike, seed: int = 0, *, eos_token_id: int | None = None) -> Path:
    """A tiny real ``CLIPModel`` + ``CLIPProcessor`` (32 px images; text width 32, like the tiny
    pipeline's text encoder, so tiny token banks can be scored as tokens), saved to ``path``.

    ``eos_token_id`` sets the text config's (default: the tokenizer's); 2 mimics legacy configs such
    as SD2's text encoder, with which transformers pools at ``argmax(input_ids)``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer()
        config = CLIPConfig(
            text_config={"vocab_size": len(tokenizer), "hidden_size": TINY_CROSS_ATTENTION_DIM,
                         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
                         "pad_token_id": tokenizer.pad_token_id},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
            projection_dim=16,
        )
        model = CLIPModel(config).eval()
    model.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def disk_full_on_call(write: Callable, n: int) -> tuple[Callable, list]:
    """A stand-in for ``write(path, data)`` whose ``n``-th call (from 1) fails as a full disk would
    (``OSError`` ENOSPC naming the path); the other calls write. Returns it and the list of paths it
    was called with."""
    import errno

    calls: list = []

    def full(path, data):
        calls.append(path)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, data)

    return full, calls

