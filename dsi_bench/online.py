"""Whether the Hugging Face Hub can be reached, decided at once.

Offline, huggingface_hub retries each request with backoff (about 30 s and a warning per retry)
before it gives up or falls back to its cache. Code that fetches from the Hub asks
:func:`hub_unreachable` first: huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``), or one
request to the Hub's endpoint, without retries, that cannot connect, means the Hub is out of reach.
The caller then reads the local cache only (``local_files_only=True``) or raises
:class:`~dsi_bench.errors.OfflineError` with one line that names the local-path option.
"""

from __future__ import annotations

import threading
import time

from .errors import OfflineError
from .memo import on_clear

__all__ = ["check_hub", "hub_unreachable"]

#: Seconds a probe's answer is trusted before the Hub is asked again.
PROBE_TTL = 60.0
_PROBES: dict[str, tuple[float, str | None]] = {}
_LOCK = threading.Lock()


@on_clear
def _forget_probes() -> None:
    with _LOCK:
        _PROBES.clear()


def hub_unreachable(*, timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, or ``None`` when it can.

    ``HF_HUB_OFFLINE`` (huggingface_hub's offline mode) answers without a request; otherwise one
    ``HEAD`` of the endpoint (no retries, ``timeout`` seconds) decides, and the answer is reused for
    :data:`PROBE_TTL` seconds. Any HTTP answer, even an error status, means the Hub is reachable.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    now = time.monotonic()
    with _LOCK:
        cached = _PROBES.get(endpoint)
        if cached is not None and now - cached[0] < PROBE_TTL:
            return cached[1]
    reason = _probe(endpoint, timeout)
    with _LOCK:
        _PROBES[endpoint] = (now, reason)
    return reason


def _probe(endpoint: str, timeout: float) -> str | None:
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy, offline mode: all "not reachable"
        text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        return f"cannot connect to {endpoint}: {type(e).__name__}" + (f": {text}" if text else "")
    return None


def check_hub(what: str, fix: str) -> None:
    """Raise :class:`OfflineError` at once when the Hub cannot be reached.

    Args:
        what: what needed the Hub (``"the token bank 'imagenet-star'"``).
        fix: the local alternative, naming its option (``"pass --tokens PATH ..."``).
    """
    reason = hub_unreachable()
    if reason is not None:
        raise OfflineError(f"{what} is on the Hugging Face Hub, which cannot be reached ({reason}); {fix}")
