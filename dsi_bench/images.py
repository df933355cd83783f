"""Image bytes: resizing and encoding generated samples, and decoding stored ones.

Resizing. Generated images are resized to the output size (768 -> 512 px for SD2) with
:data:`RESIZE_FILTER`, PIL's default filter for ``Image.resize`` (bicubic), as the original does.

Decoding. Full decoding is the default everywhere. Opt-in draft decoding (``fast_decode``):
evaluation transforms usually shrink a 512 px image to 256 px before cropping
224 px. libjpeg can decode a JPEG directly at 1/2, 1/4 or 1/8 scale ("draft mode"), which
skips most of the inverse DCT work; :func:`decode_image` asks for the smallest scale that
still leaves the shorter edge at least as long as the transform's first resize, so the
transform sees the same geometry and only the resampling path changes. PNGs (lossless
shards, pixel-identical to synthesis) are always decoded in full.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .errors import SpecError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_FORMATS", "RESIZE_FILTER", "check_image_options", "decode_error", "decode_image",
           "draft_size", "encode_image", "resize_image"]

#: File extensions read as images, with their PIL format names.
IMAGE_EXTENSIONS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: Formats generated samples are written in: ``png`` (lossless) or ``jpg`` (with a quality).
IMAGE_FORMATS = ("png", "jpg")
#: The filter generated images are resized with: PIL's default for ``Image.resize`` (the original's).
#: Recorded in every sample's settings (and so its cache key); until 0.2 it was ``"lanczos"``.
RESIZE_FILTER = "bicubic"


def resize_image(image: Image.Image, size: int) -> Image.Image:
    """``image`` resized to ``size`` x ``size`` px with :data:`RESIZE_FILTER` (unchanged when already that size)."""
    from PIL import Image

    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling[RESIZE_FILTER.upper()])


def check_image_options(image_format: str, quality: int) -> None:
    """Raise :class:`SpecError` for an unknown image format or a JPEG quality outside 1..100."""
    from .validate import check_int_range

    if image_format not in IMAGE_FORMATS:
        raise SpecError(f"image format {image_format!r} is not supported; use png or jpg")
    check_int_range(quality, "quality", 1, 100, example=95)


def encode_image(image, image_format: str, quality: int = 95) -> bytes:
    """PNG (lossless) or JPEG bytes of a PIL image; deterministic for a given Pillow build."""
    buf = io.BytesIO()
    if image_format == "jpg":
        image.save(buf, format="JPEG", quality=quality)
    elif image_format == "png":
        image.save(buf, format="PNG")
    else:
        check_image_options(image_format, quality)
    return buf.getvalue()


def decode_image(data: bytes, draft: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image, once.

    Args:
        data: encoded image (JPEG, PNG, WebP).
        draft: for JPEGs, the shortest edge the caller needs; libjpeg then decodes at the
            smallest 1/2^k scale that keeps both edges at least this long. ``None`` = full size.

    Raises:
        OSError / PIL.UnidentifiedImageError: the bytes are not a decodable image.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_error(e: Exception) -> str:
    """A short description of a decoding failure (without PIL's object reprs)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format"
    return str(e) or type(e).__name__


def draft_size(transform) -> int | None:
    """The shorter-edge size a transform first resizes to, if it is a torchvision-style resize.

    Looks through ``Compose``-like containers (``.transforms``) at the first transform; a
    ``Resize`` with an int size (or a square ``(s, s)``) gives ``s``. Anything else (crops
    first, random resized crops, custom callables) gives ``None``: decode in full.
    """
    seen = 0
    while transform is not None and hasattr(transform, "transforms") and seen < 8:
        items = list(transform.transforms)
        if not items:
            return None
        transform, seen = items[0], seen + 1
    kind = type(transform).__name__
    if kind == "ImageClassification":  # torchvision weights' transforms(): resize_size=[s]
        size = getattr(transform, "resize_size", None)
    elif kind == "Resize":
        size = getattr(transform, "size", None)
    else:
        return None
    if isinstance(size, (list, tuple)):
        if len(size) == 1:
            size = size[0]
        elif len(size) == 2 and size[0] == size[1]:
            size = size[0]
        else:
            return None
    if not isinstance(size, int) or size <= 0:
        return None
    max_size = getattr(transform, "max_size", None)
    return None if max_size else size
