"""Shared by the benchmarks: hardware description and results writing."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def hardware(device: str = "cpu") -> dict:
    """CPU model, core count, torch threads and versions (and the GPU name on CUDA)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    import PIL

    info["pillow"] = PIL.__version__
    return info


def write_result(result: dict, out: str | os.PathLike | None, default_name: str) -> Path:
    """Add the date and write ``result`` as JSON (default: ``benchmarks/results/<default_name>``)."""
    result = {"date": time.strftime("%Y-%m-%d"), **result}
    path = Path(out) if out else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
