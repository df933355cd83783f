"""A full-size Stable Diffusion 2 architecture with random weights, built from SD2's published configs.

Same layer shapes and FLOPs as ``stabilityai/stable-diffusion-2`` (768 px, v-prediction,
OpenCLIP-H text tower), nothing downloaded. The tokenizer is the tiny in-process one: token
ids only index the embedding table, so the text encoder's cost is unchanged.
"""

from __future__ import annotations

from pathlib import Path

UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)
TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


def save_sd2_random(path: str | Path, dtype: str = "float16") -> Path:
    """Write the random full-size SD2 pipeline to ``path`` (diffusers layout, safetensors)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dsi_bench.testing import SD2_SCHEDULER_CONFIG, build_tiny_tokenizer

    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**VAE),
            text_encoder=CLIPTextModel(
                CLIPTextConfig(
                    **TEXT,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            ),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**UNET),
            scheduler=EulerDiscreteScheduler(**SD2_SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.to(getattr(torch, dtype)).save_pretrained(path, safe_serialization=True)
    return path
