"""Shared fixtures: tiny real models built once per session, no network, no user cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: tests never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["DSI_BENCH_CACHE"] = tempfile.mkdtemp(prefix="dsi-bench-test-cache-")
# datasets caches local folders by name and config, not content: never reuse the user's cache.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="dsi-bench-test-datasets-")
os.environ.pop("DSI_BENCH_IMAGENET_CLASSES", None)

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip where the reference data is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from dsi_bench.testing import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory) -> Path:
    from dsi_bench.testing import save_tiny_tokens

    return save_tiny_tokens(tmp_path_factory.mktemp("tokens") / "tiny.safetensors")


@pytest.fixture
def tiny_spec(tiny_model):
    """A fast spec on the tiny pipeline: 2 steps, 32 px, denoiser batch 4."""
    from dsi_bench.pipeline import PipelineSpec

    return PipelineSpec(model=str(tiny_model), steps=2, out_size=None, batch_size=4)


@pytest.fixture(scope="session")
def classes():
    """ImageNet-1k with WordNet ids that fake releases use for classes 0-2 (no timm or class table needed)."""
    from dsi_bench.testing import FAKE_WNIDS, fake_imagenet_classes

    return fake_imagenet_classes(FAKE_WNIDS)


@pytest.fixture(scope="session")
def small_world_study(tmp_path_factory):
    """The world study at a small size (base, at night, in the snow; 2 per class), run once per session:
    shards, CLIP masks, the three world classifiers' results with their predictions, leaderboard, report."""
    from dsi_bench.demo import run_world_study

    return run_world_study(tmp_path_factory.mktemp("world-study"), shifts=("base", "at_night", "in_the_snow"),
                           per_class=2, progress=False)
