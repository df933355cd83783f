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

Limits. An image header can declare far more pixels than its bytes hold (a 1.5 KB PNG can
declare 12000 x 12000 px, ~430 MB once decoded). :func:`decode_image` reads the size from the
header and refuses more than :data:`MAX_IMAGE_PIXELS` before anything is decoded; Pillow's own
decompression-bomb warning is an error here too.

Modes. Every reader turns images into 8-bit RGB with :func:`to_rgb`: 16-bit and 32-bit integer
images (``I;16``, ``I``) are scaled by 255/65535 (a mid-grey 32768 becomes 128), float images
(``F``) are taken on Pillow's 0..255 scale and clipped, CMYK, YCbCr, palette, 1-bit and grey
images use Pillow's conversions, and anything with transparency (RGBA, LA, PA, palette or grey
with a transparent colour) is composited onto :data:`ALPHA_BACKGROUND` (white).
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from .errors import SpecError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ALPHA_BACKGROUND", "IMAGE_EXTENSIONS", "IMAGE_FORMATS", "MAX_IMAGE_PIXELS", "RESIZE_FILTER",
           "check_image_options", "decode_error", "decode_image", "draft_size", "encode_image", "resize_image",
           "to_rgb"]

#: File extensions read as images, with their PIL format names.
IMAGE_EXTENSIONS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: Formats generated samples are written in: ``png`` (lossless) or ``jpg`` (with a quality).
IMAGE_FORMATS = ("png", "jpg")
#: The filter generated images are resized with: PIL's default for ``Image.resize`` (the original's).
#: Recorded in every sample's settings (and so its cache key); until 0.2 it was ``"lanczos"``.
RESIZE_FILTER = "bicubic"
#: The most pixels one sample may have (width x height, from its header, before decoding): 4096 x 4096,
#: 48 MiB as RGB. Samples are 512 px (the release) or the generation size; bigger images are refused.
MAX_IMAGE_PIXELS = 4096 * 4096
#: The background transparent pixels are composited onto when an image becomes RGB (white).
ALPHA_BACKGROUND = (255, 255, 255)
#: Formats Pillow reports for files of another's extension (MPO: a JPEG with extra pictures).
_SAME_FORMAT = {"MPO": "JPEG"}


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


def decode_image(data: bytes, draft: int | None = None, *, ext: str | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image (see :func:`to_rgb`), once.

    Args:
        data: encoded image (JPEG, PNG, WebP).
        draft: for JPEGs, the shortest edge the caller needs; libjpeg then decodes at the
            smallest 1/2^k scale that keeps both edges at least this long. ``None`` = full size.
        ext: the extension the bytes were stored under (``"jpg"``, ``"png"``, ...): bytes of
            another format are refused (what ``verify``, ``convert`` and ``publish`` check).

    Raises:
        OSError / PIL.UnidentifiedImageError: the bytes are not a decodable image.
        PIL.Image.DecompressionBombError: the header declares more than :data:`MAX_IMAGE_PIXELS`.
        ValueError: the format is not the one ``ext`` names.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombWarning as e:
            raise Image.DecompressionBombError(str(e)) from e
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{width} x {height} px is more than the {MAX_IMAGE_PIXELS} pixels a "
                                           "sample may have (dsi_bench.images.MAX_IMAGE_PIXELS)")
    if ext is not None:
        expected = IMAGE_EXTENSIONS.get(ext.lower())
        found = _SAME_FORMAT.get(image.format, image.format)
        if found != expected:
            raise ValueError(f"{found} bytes stored as .{ext}")
    if draft and image.format == "JPEG":
        image.draft("RGB", (draft, draft))
    image.load()
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, the same way for every reader (rules in the module docs)."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _scaled_to_rgb(image)
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _scaled_to_rgb(image: Image.Image) -> Image.Image:
    """Grey RGB from a 16/32-bit integer image (0..65535 -> 0..255) or a float one (0..255, clipped)."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float32)
    if image.mode != "F":
        values = values / 257.0  # 65535 / 255
    grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


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
