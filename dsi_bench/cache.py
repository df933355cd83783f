"""On-disk sample cache: each generated sample is stored once, keyed by what made its pixels.

An entry is one lossless PNG at ``root/{key[:2]}/{key}.png`` whose text chunk holds the
sample's metadata and the sha256 of its pixels. Entries are written atomically; on read,
an entry that does not decode or whose pixels do not match their hash is treated as a
miss (and overwritten by the next put), never returned.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .files import atomic_write, default_cache_dir, ensure_writable_dir

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SampleCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

_TEXT_KEY = "dsi_bench"


def pixel_digest(image) -> str:
    """sha256 of an image's mode, size and raw pixel bytes."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class SampleCache:
    """A folder of generated samples.

    Args:
        root: the cache folder (created); checked for writability up front.

    Raises:
        CacheError: the folder cannot be created or written.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = ensure_writable_dir(root if root is not None else default_cache_dir(), "cache folder")
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"SampleCache({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> tuple[Image.Image, dict] | None:
        """``(PIL image, metadata)`` for a key, or ``None`` when absent or damaged."""
        from PIL import Image

        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                meta = json.loads(im.text[_TEXT_KEY])
                image = im.convert("RGB") if im.mode != "RGB" else im.copy()
            if meta.pop("pixel_sha256") != pixel_digest(image):
                raise ValueError("pixel hash mismatch")
        except Exception as e:  # noqa: BLE001 - any damage means "regenerate"
            logger.warning("cache entry %s is damaged (%s); it will be regenerated", path, e)
            self.misses += 1
            return None
        self.hits += 1
        return image, meta

    def put(self, key: str, image, metadata: dict) -> Path:
        """Store a sample atomically (overwrites a damaged entry)."""
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(_TEXT_KEY, json.dumps({**metadata, "pixel_sha256": pixel_digest(image)}, sort_keys=True))
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info, compress_level=1)
        return atomic_write(self.path(key), buf.getvalue())

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()
