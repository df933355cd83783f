"""Shared by the benchmarks: hardware description and results writing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def hardware(device: str = "cpu") -> dict:
    """What results files record (:func:`dsi_bench.evaluate.hardware_info`) plus torch threads and versions."""
    import PIL
    import torch

    from dsi_bench.evaluate import hardware_info

    info = {**hardware_info(device), "torch_threads": torch.get_num_threads(), "pillow": PIL.__version__}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def write_result(result: dict, out: str | os.PathLike | None, default_name: str) -> Path:
    """Add the date and write ``result`` as JSON (default: ``benchmarks/results/<default_name>``)."""
    result = {"date": time.strftime("%Y-%m-%d"), **result}
    path = Path(out) if out else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
