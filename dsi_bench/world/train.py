"""Training the embedded world: autoencoder, text-to-image UNet, class tokens, CLIP and classifiers.

``dsi-bench world train --out DIR`` (:func:`train_world`) runs five stages, each a pure function of
the :class:`WorldConfig` (seeded; every batch is drawn from a generator seeded by the step):

* ``vae``: an ``AutoencoderKL`` (32 px -> 16x16x4 latents) on renders of every context;
* ``unet``: a ``UNet2DConditionModel`` and a ``CLIPTextModel`` trained jointly on the world's
  captions (v-prediction with Stable Diffusion 2's noise schedule, 10 % empty captions for
  classifier-free guidance, EMA weights), saved with the VAE, tokenizer and an Euler scheduler as a
  diffusers Stable Diffusion folder (``DIR/pipeline``);
* ``tokens``: one token per class learned by :func:`dsi_bench.learn_tokens` itself from base renders,
  starting from the word "object" (``DIR/tokens.safetensors``);
* ``clip``: a ``CLIPModel`` (image and text towers) trained contrastively on the same captions (``DIR/clip``);
* ``classifiers``: ``base`` (base renders only), ``augmented`` (backgrounds, object colours and
  co-occurring objects too) and ``resnet`` (another architecture, base renders with colour jitter),
  ``DIR/classifiers/NAME.safetensors``.

Stages save checkpoints as they go, so a rerun resumes; ``jobs=2`` runs the two independent chains
(vae -> unet -> tokens, and classifiers -> clip) in two processes of one thread each. When all are
done, ``DIR/manifest.json`` records the configuration, the library versions, per-stage times and
measurements, and each file's size and sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..files import atomic_write, sha256_file
from .scene import CONTEXTS, SIZE, WORLD_CLASSES, caption, render, render_array

logger = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())

__all__ = ["CLASSIFIERS", "STAGES", "WorldConfig", "train_world"]

STAGES = ("vae", "unet", "tokens", "clip", "classifiers")
#: The two chains of stages that can run side by side.
CHAINS = (("vae", "unet", "tokens"), ("classifiers", "clip"))

#: Held-out renders that measure the autoencoder (half as many) and the classifiers.
HELD_OUT_RENDERS = 1000
#: Held-out renders that fit the world CLIP's thresholds.
CALIBRATION_RENDERS = 2000

#: What each classifier sees in training: (architecture, contexts, colour jitter).
_GROUPS_SEEN = ("none", "background", "colour", "co-occurrence")
CLASSIFIERS = {
    "base": ("cnn", ("base",), False),
    "augmented": ("cnn", None, False),  # None: every context of _GROUPS_SEEN
    "resnet": ("resnet", ("base",), True),
}


@dataclass(frozen=True)
class WorldConfig:
    """Every setting of a world training run (recorded in the manifest)."""

    seed: int = 0
    pool: int = 24000
    base_share: float = 0.25
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 4000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    ema: float = 0.995
    cond_drop: float = 0.1
    checkpoint_every: int = 250
    token_images: int = 50
    token_steps: int = 400
    token_lr: float = 5e-3
    clip_steps: int = 2000
    clip_batch: int = 128
    clip_lr: float = 1e-3
    classifier_steps: int = 1000
    classifier_batch: int = 64
    classifier_lr: float = 2e-3
    classifier_images: int = 12000
    threads: int = 1
    #: Versions of the renderer and of the world's tokenizer: a folder trained with others is a
    #: different world (2: snow washes toward white; every caption word is one token).
    renderer: int = 2
    tokenizer: int = 2

    def record(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- helpers
def _torch(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def _gen(config: WorldConfig, stage: str, step: int):
    import torch

    digest = hashlib.sha256(f"{config.seed}/{stage}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _pool_items(config: WorldConfig, n: int, offset: int, contexts=None, base_share=None) -> list[tuple[int, str, int]]:
    """``n`` (class, context, seed) triples: classes in turn, contexts drawn with ``base_share`` for base."""
    rng = np.random.default_rng([config.seed, offset])
    contexts = list(contexts or CONTEXTS)
    others = [c for c in contexts if c != "base"]
    share = config.base_share if base_share is None else base_share
    items = []
    for i in range(n):
        cls = WORLD_CLASSES[i % len(WORLD_CLASSES)].index
        ctx = "base" if (not others or ("base" in contexts and rng.random() < share)) else others[
            rng.integers(len(others))]
        items.append((cls, ctx, offset + i))
    return items


def _as_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _stage_dir(out: Path) -> Path:
    return out / ".train"


def _done_path(out: Path, stage: str) -> Path:
    return _stage_dir(out) / f"{stage}.done.json"


def _mark_done(out: Path, stage: str, record: dict) -> None:
    atomic_write_text(_done_path(out, stage), json.dumps(record, indent=2))


def _save_ckpt(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_ckpt(path: Path) -> dict | None:
    import torch

    if not path.exists():
        return None
    return torch.load(path, weights_only=True)  # our own checkpoint, still read without unpickling code


def _bar(total: int, desc: str, position: int, initial: int = 0, progress: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, position=position, initial=initial, disable=not progress, leave=True,
                dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- vae
def _build_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=SIZE, mid_block_add_attention=False)
    import torch

    with torch.no_grad():  # start near-deterministic: the default start stalls (posterior noise swamps the signal)
        vae.encoder.conv_out.bias[4:].fill_(-12.0)
    return vae


def _train_vae(out: Path, config: WorldConfig, position: int, progress: bool) -> dict:
    torch = _torch(config.threads)
    work = _stage_dir(out) / "vae"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    vae = _build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    start = 0
    ckpt = _load_ckpt(work / "ckpt.pt")
    if ckpt:
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])
    images = _as_tensor(render_array(_pool_items(config, config.pool // 2, 0)))
    bar = _bar(config.vae_steps, "world vae", position, start, progress)
    for step in range(start, config.vae_steps):
        g = _gen(config, "vae", step)
        lr = config.vae_lr * 0.5 * (1 + math.cos(math.pi * step / config.vae_steps))
        _set_lr(opt, lr)
        x = images[torch.randint(len(images), (config.vae_batch,), generator=g)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-7 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.vae_steps:
            _save_ckpt(work / "ckpt.pt", {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    bar.close()
    vae.eval()
    held = _as_tensor(render_array(_pool_items(config, HELD_OUT_RENDERS // 2, 5_000_000)))
    with torch.no_grad():
        mean = torch.cat([vae.encode(held[i:i + 128]).latent_dist.mean for i in range(0, len(held), 128)])
        rec = torch.cat([vae.decode(mean[i:i + 128]).sample for i in range(0, len(mean), 128)])
    mse = torch.mean((rec.clamp(-1, 1) - held) ** 2).item() / 4  # in [0, 1] units
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(work / "model", safe_serialization=True)
    return {"psnr_db": round(10 * math.log10(1 / mse), 2), "scaling_factor": scaling,
            "parameters": sum(p.numel() for p in vae.parameters())}


# ---------------------------------------------------------------------------------------------- unet
#: Prompt length of the world's tokenizer, a third of Stable Diffusion's 77 (cross-attention cost); the
#: longest catalog caption of the world takes 11.
PROMPT_TOKENS = 24


def world_tokenizer():
    """The world's ``CLIPTokenizer``: every word of its captions (class names, catalog shift phrases, the
    token-learning template and init word) is one token, as in Stable Diffusion's 49k vocabulary.

    A class name spelt in pieces would make a learned one-vector token move every later word of a
    shifted prompt to positions the generator never saw with that word (the learned tokens then ignore
    the shift). Other text still tokenizes, byte by byte.
    """
    from ..testing import build_tiny_tokenizer

    corpus = [caption(c.index, ctx) for c in WORLD_CLASSES for ctx in CONTEXTS]
    corpus += [t.format(TOKEN_INIT_WORD) for t in TOKEN_TEMPLATES]
    tokenizer = build_tiny_tokenizer(vocab_size=None, corpus=corpus)
    tokenizer.model_max_length = PROMPT_TOKENS
    return tokenizer


def _build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu"))


def _build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16, use_linear_projection=True)


def _unet_data(out: Path, config: WorldConfig, vae, tokenizer):
    import torch

    cache = _stage_dir(out) / "unet" / "latents.pt"
    items = _pool_items(config, config.pool, 0)
    if cache.exists():
        latents = torch.load(cache, weights_only=True)
    else:
        images = _as_tensor(render_array(items))
        with torch.no_grad():
            latents = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        latents = latents * vae.config.scaling_factor
        torch.save(latents, cache)
    captions = [caption(c, ctx) for c, ctx, _ in items]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids[0]
    return latents, ids, empty


def _train_unet(out: Path, config: WorldConfig, position: int, progress: bool) -> dict:
    torch = _torch(config.threads)
    from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    from ..testing import SD2_SCHEDULER_CONFIG

    work = _stage_dir(out) / "unet"
    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(_stage_dir(out) / "vae" / "model").eval()
    tokenizer = world_tokenizer()
    torch.manual_seed(config.seed + 1)
    unet, text = _build_unet(), _build_text_encoder(tokenizer)
    ema_unet, ema_text = _build_unet(), _build_text_encoder(tokenizer)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text.state_dict())
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    start = 0
    ckpt = _load_ckpt(work / "ckpt.pt")
    if ckpt:
        for module, key in ((unet, "unet"), (text, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(ckpt[key])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])
    latents, ids, empty = _unet_data(out, config, vae, tokenizer)
    noise_sched = DDPMScheduler(**SD2_SCHEDULER_CONFIG)
    ema_pairs = [(e, p) for m, em in ((unet, ema_unet), (text, ema_text))
                 for e, p in zip(em.parameters(), m.parameters())]
    bar = _bar(config.unet_steps, "world unet", position, start, progress)
    unet.train()
    text.train()
    for step in range(start, config.unet_steps):
        g = _gen(config, "unet", step)
        cosine = 0.5 * (1 + math.cos(math.pi * step / config.unet_steps))
        lr = config.unet_lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * cosine)
        _set_lr(opt, lr)
        idx = torch.randint(len(latents), (config.unet_batch,), generator=g)
        x0, tok = latents[idx], ids[idx].clone()
        tok[torch.rand(len(idx), generator=g) < config.cond_drop] = empty
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, text(tok)[0]).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(config.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in ema_pairs:
                e.lerp_(p, 1 - decay)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.unet_steps:
            _save_ckpt(work / "ckpt.pt", {"unet": unet.state_dict(), "text": text.state_dict(),
                                          "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                                          "opt": opt.state_dict(), "step": step + 1})
    bar.close()
    scheduler = EulerDiscreteScheduler(**SD2_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=ema_text.eval(), tokenizer=tokenizer, unet=ema_unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    _replace_dir(lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), out / "pipeline")
    return {"unet_parameters": sum(p.numel() for p in unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in text.parameters()), "final_loss": round(loss.item(), 4)}


def _replace_dir(write, dest: Path) -> None:
    """Write a folder beside ``dest`` and swap it in (a crash leaves the old one or none, never half)."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------------- tokens
#: The prompt the world's tokens learn in: its own base caption. The reference's 27 templates hold words
#: ("rendering", "cropped", "dirty") the world's text encoder never trained on: their rows are random,
#: and tokens learned through them reached 86 % under base instead of 100 % (measured).
TOKEN_TEMPLATES = ("a photo of a {}",)
#: The word each class token starts from.
TOKEN_INIT_WORD = "object"


def _train_tokens(out: Path, config: WorldConfig, position: int, progress: bool) -> dict:
    _torch(config.threads)
    from ..learn import learn_tokens

    data = _stage_dir(out) / "tokens" / "train"
    for cls in WORLD_CLASSES:
        folder = data / cls.wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(config.token_images):
            path = folder / f"{i:03d}.png"
            if not path.exists():
                render(cls.index, "base", 7_000_000 + i).save(path)
    bank = learn_tokens(data, generator=out / "pipeline", preset="fast", max_steps=config.token_steps,
                        lr=config.token_lr, classes_per_batch=len(WORLD_CLASSES), seed=config.seed,
                        out=_stage_dir(out) / "tokens" / "bank.safetensors", init_word=TOKEN_INIT_WORD,
                        templates=TOKEN_TEMPLATES, progress=progress)
    bank.save(out / "tokens.safetensors")
    return {"tokens": list(bank.tokens), "steps": config.token_steps, "init_word": "object",
            "templates": list(TOKEN_TEMPLATES)}


# ---------------------------------------------------------------------------------------------- clip
def _build_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                       "image_size": SIZE, "patch_size": 4},
        projection_dim=64)
    return CLIPModel(config)


def _clip_pixels(images: np.ndarray):
    import torch

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std


def _train_clip(out: Path, config: WorldConfig, position: int, progress: bool) -> dict:
    torch = _torch(config.threads)
    from transformers import CLIPImageProcessor, CLIPProcessor

    from ..testing import build_tiny_tokenizer

    work = _stage_dir(out) / "clip"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(config.seed + 2)
    model = _build_clip(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=config.clip_lr, weight_decay=1e-2)
    start = 0
    ckpt = _load_ckpt(work / "ckpt.pt")
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])
    items = _pool_items(config, config.pool, 10_000_000, base_share=1 / len(CONTEXTS))
    pixels = _clip_pixels(render_array(items))
    # Three texts per image, as the CLIP metric asks: the full caption, the object alone ("a photo of a
    # school bus", the reference rule's object text) and the shift alone ("a photo in the snow").
    texts = [_clip_texts(c, ctx) for c, ctx, _ in items]
    unique = sorted({t for group in texts for t in group})
    where = {t: i for i, t in enumerate(unique)}
    text_ids = torch.tensor([[where[t] for t in group] for group in texts])
    tok = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    bar = _bar(config.clip_steps, "world clip", position, start, progress)
    model.train()
    for step in range(start, config.clip_steps):
        g = _gen(config, "clip", step)
        lr = config.clip_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / config.clip_steps))
        _set_lr(opt, lr)
        idx = torch.randint(len(pixels), (config.clip_batch,), generator=g)
        form = torch.multinomial(torch.tensor([0.5, 0.25, 0.25]), len(idx), replacement=True, generator=g)
        caps = text_ids[idx, form]
        img = model.get_image_features(pixel_values=pixels[idx])
        txt = model.get_text_features(input_ids=tok.input_ids[caps], attention_mask=tok.attention_mask[caps])
        img, txt = (_features(img), _features(txt))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        same = (caps[:, None] == caps[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.T.log_softmax(1), 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.clip_steps:
            _save_ckpt(work / "ckpt.pt", {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    bar.close()
    model.eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": SIZE},
                                                                 crop_size={"height": SIZE, "width": SIZE}),
                              tokenizer=tokenizer)

    def write(tmp):
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)

    calibration = _calibrate_clip(model, tokenizer, config)

    def write_all(tmp):
        write(tmp)
        atomic_write_text(tmp / "thresholds.json", json.dumps(calibration, indent=2))

    _replace_dir(write_all, out / "clip")
    return {"parameters": sum(p.numel() for p in model.parameters()), "final_loss": round(loss.item(), 4),
            **calibration["calibration"]}


def _clip_texts(class_index: int, context: str) -> tuple[str, str, str]:
    from ..shifts import get_shift

    name = next(c.name for c in WORLD_CLASSES if c.index == class_index)
    obj = f"a photo of a {name}"
    return caption(class_index, context), obj, get_shift(context).caption or obj


def _best_cut(pos, neg) -> tuple[float, float]:
    """The threshold that best separates positive from negative scores (max TPR - FPR), and that margin."""
    import torch

    values = torch.cat([pos, neg]).sort().values
    best, cut = -1.0, float(values[0])
    for v in values[:: max(1, len(values) // 400)]:
        j = (pos >= v).float().mean().item() - (neg >= v).float().mean().item()
        if j > best:
            best, cut = j, float(v)
    return cut, best


def _calibrate_clip(model, tokenizer, config: WorldConfig) -> dict:
    """Thresholds of the reference keep rule for the world's CLIP, fitted on held-out renders: the object
    threshold separates the true class's text from another class's, the shift threshold the true shift's
    caption from another shift's."""
    import torch

    from ..shifts import get_shift

    items = _pool_items(config, CALIBRATION_RENDERS, 40_000_000, base_share=1 / len(CONTEXTS))
    rng = np.random.default_rng(config.seed)
    names = {c.index: c.name for c in WORLD_CLASSES}
    others = [c for c in CONTEXTS if c != "base"]

    def encode(texts):
        t = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt")
        f = _features(model.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask))
        return f / f.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        img = torch.cat([_features(model.get_image_features(pixel_values=_clip_pixels(render_array(items[i:i + 256]))))
                         for i in range(0, len(items), 256)])
        img = img / img.norm(dim=-1, keepdim=True)
        wrong_cls = [(c + 1 + rng.integers(len(WORLD_CLASSES) - 1)) % len(WORLD_CLASSES) for c in
                     (next(k for k, w in enumerate(WORLD_CLASSES) if w.index == ci) for ci, _, _ in items)]
        pos_obj = (img * encode([f"a photo of a {names[c]}" for c, _, _ in items])).sum(1)
        neg_obj = (img * encode([f"a photo of a {WORLD_CLASSES[w].name}" for w in wrong_cls])).sum(1)
        shifted = [i for i, (_, ctx, _) in enumerate(items) if ctx != "base"]
        wrong_ctx = [others[(others.index(items[i][1]) + 1 + rng.integers(len(others) - 1)) % len(others)]
                     for i in shifted]
        pos_shift = (img[shifted] * encode([get_shift(items[i][1]).caption for i in shifted])).sum(1)
        neg_shift = (img[shifted] * encode([get_shift(c).caption for c in wrong_ctx])).sum(1)
    obj_cut, obj_j = _best_cut(pos_obj, neg_obj)
    shift_cut, shift_j = _best_cut(pos_shift, neg_shift)
    return {"thresholds": {"rule": "reference", "object_threshold": obj_cut, "shift_threshold": shift_cut,
                           "per_shift": {}, "source": "dsi-bench world train", "calibrated": True},
            "calibration": {"held_out_renders": len(items), "object_youden_j": round(obj_j, 4),
                            "shift_youden_j": round(shift_j, 4),
                            "object_threshold": round(obj_cut, 4), "shift_threshold": round(shift_cut, 4)}}


def _features(out):
    """transformers 5 returns a model output from ``get_*_features``; 4.x a tensor."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


# ---------------------------------------------------------------------------------------------- classifiers
def _augment(x, g, colour: bool):
    import torch
    import torch.nn.functional as F

    n = len(x)
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    x = pad[:, :, dy:dy + SIZE, dx:dx + SIZE]
    blur = torch.rand(n, generator=g) < 0.5  # generations are a little soft: so are half the training images
    kernel = torch.tensor([0.25, 0.5, 0.25])
    k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    soft = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    x = torch.where(blur[:, None, None, None], soft, x)
    if colour:  # hue rotation by a random permutation-and-mix of channels, and a random grey
        perm = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])
        mixed = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
        a = torch.rand(n, 1, 1, 1, generator=g)
        x = a * x + (1 - a) * mixed
    return x + 0.03 * torch.randn(x.shape, generator=g)


def _train_classifiers(out: Path, config: WorldConfig, position: int, progress: bool) -> dict:
    torch = _torch(config.threads)
    from safetensors.torch import save_file

    from ..shifts import get_shift
    from .nets import MEAN, STD, build_net

    work = _stage_dir(out) / "classifiers"
    work.mkdir(parents=True, exist_ok=True)
    seen = tuple(c for c in CONTEXTS if get_shift(c).group in _GROUPS_SEEN)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    record = {}
    held_items = _pool_items(config, HELD_OUT_RENDERS, 20_000_000, contexts=("base",))
    held = (torch.from_numpy(render_array(held_items)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    held_y = torch.tensor([i % len(WORLD_CLASSES) for i in range(len(held_items))])
    for k, (name, (arch, contexts, colour)) in enumerate(CLASSIFIERS.items()):
        dest = out / "classifiers" / f"{name}.safetensors"
        done = work / f"{name}.json"
        if dest.exists() and done.exists():
            record[name] = json.loads(done.read_text())
            continue
        items = _pool_items(config, config.classifier_images, 30_000_000 + k * 1_000_000,
                            contexts=contexts or seen, base_share=0.3)
        x_all = (torch.from_numpy(render_array(items)).permute(0, 3, 1, 2).float() / 255 - mean) / std
        y_all = torch.tensor([i % len(WORLD_CLASSES) for i in range(len(items))])
        torch.manual_seed(config.seed + 10 + k)
        net = build_net(arch)
        opt = torch.optim.AdamW(net.parameters(), lr=config.classifier_lr, weight_decay=5e-4)
        bar = _bar(config.classifier_steps, f"world classifier {name}", position, 0, progress)
        net.train()
        for step in range(config.classifier_steps):
            g = _gen(config, f"classifier/{name}", step)
            lr = config.classifier_lr * 0.5 * (1 + math.cos(math.pi * step / config.classifier_steps))
            _set_lr(opt, lr)
            idx = torch.randint(len(x_all), (config.classifier_batch,), generator=g)
            x = _augment(x_all[idx], g, colour)
            loss = torch.nn.functional.cross_entropy(net(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        net.eval()
        with torch.no_grad():
            acc = (net(held).argmax(1) == held_y).float().mean().item()
        meta = {"architecture": arch, "contexts": ",".join(contexts or seen), "colour_jitter": str(colour),
                "classes": ",".join(str(c.index) for c in WORLD_CLASSES)}
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_file({k2: v.contiguous() for k2, v in net.state_dict().items()}, str(dest), metadata=meta)
        record[name] = {"architecture": arch, "contexts": list(contexts or seen), "colour_jitter": colour,
                        "held_out_base_top1": round(acc, 4),
                        "parameters": sum(p.numel() for p in net.parameters())}
        atomic_write_text(done, json.dumps(record[name]))
    return record


_RUNNERS = {"vae": _train_vae, "unet": _train_unet, "tokens": _train_tokens, "clip": _train_clip,
            "classifiers": _train_classifiers}


# ---------------------------------------------------------------------------------------------- driver
def _run_chain(out: str, config: WorldConfig, chain: tuple[str, ...], position: int, progress: bool) -> None:
    out = Path(out)
    for stage in chain:
        if _done_path(out, stage).exists():
            continue
        t0 = time.time()
        record = _RUNNERS[stage](out, config, position, progress)
        record["seconds"] = round(time.time() - t0, 1)
        _mark_done(out, stage, record)


def _check_config(out: Path, config: WorldConfig) -> None:
    saved = _stage_dir(out) / "config.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before != config.record():
            changed = sorted(k for k in before if before.get(k) != config.record().get(k))
            raise SpecError(f"{out} holds a world trained with other settings ({', '.join(changed)}); "
                            "pass another --out, or the same settings to resume")
    else:
        _stage_dir(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(config.record(), indent=2))


def write_manifest(out: Path, config: WorldConfig) -> dict:
    import diffusers
    import torch
    import transformers

    from ..version import __version__

    stages = {s: json.loads(_done_path(out, s).read_text()) for s in STAGES}
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and ".train" not in p.parts
                       and p.name != "manifest.json"):
        files[path.relative_to(out).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": "dsi-bench-world/1",
        "classes": [dataclasses.asdict(c) for c in WORLD_CLASSES],
        "image_size": SIZE,
        "config": config.record(),
        "versions": {"dsi_bench": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def train_world(out: str | os.PathLike, config: WorldConfig | None = None, *, jobs: int = 2,
                stages: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    """Train the world into ``out`` (resuming what is there) and write its manifest.

    Args:
        out: the output folder (``dsi_bench/world/weights`` regenerates the shipped world).
        config: the settings (default: the shipped world's).
        jobs: 2 runs the two independent chains side by side (one thread each); 1 runs them in turn.
        stages: train only these (others must be done for the manifest); default all.

    Returns:
        The manifest (or, with ``stages``, the records of the stages done so far).
    """
    config = config or WorldConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    wanted = set(stages or STAGES)
    unknown = wanted - set(STAGES)
    if unknown:
        raise SpecError(f"unknown world stage(s) {sorted(unknown)}; the stages are {', '.join(STAGES)}")
    chains = [tuple(s for s in chain if s in wanted) for chain in CHAINS]
    chains = [c for c in chains if c]
    if jobs > 1 and len(chains) > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        other = ctx.Process(target=_run_chain, args=(str(out), config, chains[1], 1, progress))
        other.start()
        try:
            _run_chain(str(out), config, chains[0], 0, progress)
        finally:
            other.join()
        if other.exitcode:
            raise SpecError(f"world training stage(s) {', '.join(chains[1])} failed (exit code {other.exitcode}); "
                            "rerun to resume")
    else:
        for chain in chains:
            _run_chain(str(out), config, chain, 0, progress)
    if all(_done_path(out, s).exists() for s in STAGES):
        return write_manifest(out, config)
    return {s: json.loads(_done_path(out, s).read_text()) for s in STAGES if _done_path(out, s).exists()}
