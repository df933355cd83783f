"""Devices: one place that reads a device string, resolves ``"auto"`` and checks the device is here.

Every command's ``--device`` (and library code that loads a model) goes through
:func:`resolve_device`, so a device this machine lacks is one line naming the devices there are,
before anything is loaded or written, instead of a CUDA traceback halfway through a run.
"""

from __future__ import annotations

from .errors import SpecError

__all__ = ["AUTO", "available_devices", "resolve_device"]

#: Pick the best device here: CUDA if there is one, else MPS, else CPU.
AUTO = "auto"

_EXAMPLES = "'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'"


def available_devices() -> list[str]:
    """The devices of this machine that torch can use, best last (``["cpu", "cuda:0", "cuda:1"]``)."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _fix(option: str | None, device: str) -> str:
    if option:
        return f"use {option} auto (the best device here) or {option} cpu"
    return f"pass device='auto' (the best device here) or device='cpu' instead of {device!r}"


def resolve_device(device: str | None, *, check: bool = False, option: str | None = None) -> str:
    """Normalise a device string; ``"auto"`` picks CUDA, then MPS, then CPU.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"``, any torch device, or
            ``None`` (CPU: the caller owns the device).
        check: also refuse a device this machine does not have (a CUDA device without a GPU or
            past the last one, MPS off a Mac). Off where the device lives elsewhere (Ray workers).
        option: the command-line flag the device came from, for the message (``"--device"``).

    Returns:
        The device, lower-case (``"auto"`` resolved).

    Raises:
        SpecError: not a torch device, or (with ``check``) not available here; the message lists
            the devices there are.
    """
    import torch

    name = (device or "cpu").strip().lower()
    if name == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, TypeError) as cause:
        given = f"{option} {device}" if option else f"device {device!r}"
        raise SpecError(f"{given} is not a torch device; use {_EXAMPLES}") from cause
    if check:
        why = _unavailable(parsed)
        if why:
            where = f"{option} {name}: " if option else ""
            raise SpecError(f"{where}{why}; devices here: {', '.join(available_devices())}; {_fix(option, name)}")
    return name


def _unavailable(device) -> str | None:
    """Why ``device`` cannot be used on this machine, or ``None`` when it can."""
    import torch

    kind = device.type
    if kind == "cpu" or kind == "meta":
        return None
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "no GPU or driver found" if torch.backends.cuda.is_built() else "torch was built without CUDA"
            return f"cuda is not available here ({why})"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{device} does not exist here ({count} CUDA device{'s' if count != 1 else ''})"
        return None
    if kind == "mps":
        return None if _mps_available() else "mps is not available here (it needs Apple silicon and a torch with MPS)"
    backend = getattr(torch, kind, None)  # xpu, hpu, ...: the backend says whether it is there
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        return f"{kind} is not available here"
    return None
