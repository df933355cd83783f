"""The procedural world: ten ImageNet classes drawn in every catalog context, deterministically.

A scene is a pure function of ``(class, context, seed)``: :func:`render` draws the class's object
with a random pose, size, position and colour at 64 px (PIL polygons), puts it in the context
(background, weather, lighting, object colour, a person or flower beside it, or an art style)
and shrinks it to :data:`SIZE` px with a box filter. :func:`caption` is the catalog's prompt for
the class and context (``"a photo of a school bus in the snow"``), so the world speaks the
catalog's wording and ImageNet's labels (real indices and WordNet ids).

Why 32 px: the ten objects stay apart at 32 px (the world's base classifier reaches its target
there), and every diffusion step costs about a quarter of a 64 px step (4x the latent pixels),
which is what lets the whole world train in about an hour on two CPU cores.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..shifts import get_shift, list_shifts

__all__ = ["CONTEXTS", "COLOURS", "DRAW_SIZE", "SIZE", "WORLD_CLASSES", "WorldClass", "caption", "contact_sheet",
           "render",
           "render_array", "object_hue"]

#: Final image size in px; scenes are drawn at :data:`DRAW_SIZE` and box-filtered down.
SIZE = 32
DRAW_SIZE = 64


@dataclass(frozen=True)
class WorldClass:
    """One class of the world: its ImageNet index, WordNet id and the release's common name."""

    index: int
    wnid: str
    name: str


#: The world's classes, in label order of the world's 10-way heads.
WORLD_CLASSES: tuple[WorldClass, ...] = (
    WorldClass(1, "n01443537", "goldfish"),
    WorldClass(404, "n02690373", "airliner"),
    WorldClass(779, "n04146614", "school bus"),
    WorldClass(805, "n04254680", "soccer ball"),
    WorldClass(849, "n04398044", "teapot"),
    WorldClass(879, "n04507155", "umbrella"),
    WorldClass(920, "n06874185", "traffic light"),
    WorldClass(947, "n07734744", "mushroom"),
    WorldClass(949, "n07745940", "strawberry"),
    WorldClass(954, "n07753592", "banana"),
)
_BY_INDEX = {c.index: c for c in WORLD_CLASSES}

#: Every catalog shift is drawable: ``base`` plus the 23 shifts, by catalog id.
CONTEXTS: tuple[str, ...] = tuple(s.id for s in list_shifts())

#: Object colours of the colour shifts (RGB).
COLOURS = {"blue": (40, 80, 220), "green": (40, 170, 60), "red": (210, 30, 30), "yellow": (240, 210, 30),
           "orange": (245, 130, 20)}

RGB = tuple[int, int, int]


def caption(class_index: int, context: str = "base") -> str:
    """The catalog prompt of a class in a context, with the class's common name."""
    return get_shift(context).prompt(_world_class(class_index).name)


def _world_class(class_index: int) -> WorldClass:
    try:
        return _BY_INDEX[int(class_index)]
    except (KeyError, ValueError, TypeError) as e:
        from ..errors import ClassSpecError

        names = ", ".join(f"{c.index} {c.name}" for c in WORLD_CLASSES)
        raise ClassSpecError(f"class {class_index!r} is not in the world; its classes are {names}") from e


def _rng(class_index: int, context: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(class_index), zlib.crc32(context.encode())])


def _jitter(rng: np.random.Generator, colour: RGB, amount: float = 0.08) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
    h = (h + rng.uniform(-amount, amount) * 0.3) % 1.0
    s = float(np.clip(s * rng.uniform(1 - amount, 1 + amount), 0, 1))
    v = float(np.clip(v * rng.uniform(1 - 2 * amount, 1 + amount), 0, 1))
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


# ---------------------------------------------------------------------------------------------- objects
# Each draws its object centred at (0, 0) in a box of about [-1, 1]^2, through `p` (unit -> pixels).
Draw = Callable[[ImageDraw.ImageDraw, Callable, float, RGB, np.random.Generator], None]


def _poly(d, p, points, fill, outline=None):
    d.polygon([p(x, y) for x, y in points], fill=fill, outline=outline)


def _rect(d, p, x0, y0, x1, y1, fill):
    _poly(d, p, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill=fill)


def _ellipse(d, p, cx, cy, rx, ry, s, fill, outline=None, width=1):
    x0, y0 = p(cx - rx, cy - ry)
    x1, y1 = p(cx + rx, cy + ry)
    d.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=fill, outline=outline, width=width)


def _goldfish(d, p, s, main, rng):
    _poly(d, p, [(0.45, 0), (0.95, -0.45), (0.85, 0), (0.95, 0.45)], fill=main)  # tail
    _poly(d, p, [(-0.1, -0.3), (0.25, -0.62), (0.3, -0.25)], fill=main)  # dorsal fin
    _ellipse(d, p, -0.1, 0, 0.6, 0.36, s, fill=main)
    _ellipse(d, p, -0.45, -0.08, 0.08, 0.08, s, fill=(20, 20, 20))


def _airliner(d, p, s, main, rng):
    dark = tuple(int(c * 0.6) for c in main)
    _poly(d, p, [(-0.05, 0), (0.35, 0), (0.05, -0.75), (-0.15, -0.75)], fill=dark)  # wing
    _poly(d, p, [(0.55, -0.05), (0.9, -0.05), (0.95, -0.5), (0.8, -0.5)], fill=dark)  # tail fin
    _ellipse(d, p, 0, 0.02, 0.95, 0.16, s, fill=main)
    _poly(d, p, [(-0.05, 0.05), (0.35, 0.05), (0.1, 0.7), (-0.12, 0.7)], fill=dark)  # near wing
    for i in range(6):
        _ellipse(d, p, -0.55 + i * 0.18, -0.02, 0.035, 0.035, s, fill=(40, 60, 90))


def _school_bus(d, p, s, main, rng):
    _rect(d, p, -0.95, -0.45, 0.95, 0.4, fill=main)
    for i in range(5):
        x = -0.8 + i * 0.32
        _rect(d, p, x, -0.32, x + 0.22, -0.05, fill=(60, 80, 110))
    _rect(d, p, -0.95, 0.08, 0.95, 0.14, fill=(30, 30, 30))
    for x in (-0.55, 0.55):
        _ellipse(d, p, x, 0.42, 0.17, 0.17, s, fill=(25, 25, 25))


def _soccer_ball(d, p, s, main, rng):
    _ellipse(d, p, 0, 0, 0.8, 0.8, s, fill=main, outline=(30, 30, 30), width=max(1, int(0.04 * s)))
    dark = (25, 25, 25)
    pent = [(0.26 * math.cos(a), 0.26 * math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, 6)[:-1]]
    _poly(d, p, pent, fill=dark)
    for k in range(5):
        a = -math.pi / 2 + k * 2 * math.pi / 5
        cx, cy = 0.62 * math.cos(a), 0.62 * math.sin(a)
        pts = [(cx + 0.16 * math.cos(b), cy + 0.16 * math.sin(b)) for b in np.linspace(0, 2 * math.pi, 6)[:-1]]
        _poly(d, p, pts, fill=dark)


def _teapot(d, p, s, main, rng):
    w = max(2, int(0.1 * s))
    x0, y0 = p(0.45, -0.35)
    x1, y1 = p(0.95, 0.25)
    d.arc([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], start=-100, end=100, fill=main, width=w)  # handle
    _poly(d, p, [(-0.5, 0.05), (-0.95, -0.45), (-0.85, -0.5), (-0.4, -0.15)], fill=main)  # spout
    _ellipse(d, p, 0, 0.1, 0.6, 0.5, s, fill=main)
    _ellipse(d, p, 0, -0.38, 0.3, 0.1, s, fill=tuple(int(c * 0.75) for c in main))  # lid
    _ellipse(d, p, 0, -0.52, 0.09, 0.08, s, fill=tuple(int(c * 0.6) for c in main))


def _umbrella(d, p, s, main, rng):
    w = max(2, int(0.07 * s))
    d.line([p(0, -0.2), p(0, 0.75)], fill=(60, 40, 30), width=w)
    x0, y0 = p(-0.1, 0.6)
    x1, y1 = p(0.1, 0.9)
    d.arc([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], start=0, end=180, fill=(60, 40, 30), width=w)
    x0, y0 = p(-0.95, -0.85)
    x1, y1 = p(0.95, 0.35)
    d.pieslice([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], start=180, end=360, fill=main)
    for i in range(4):  # scalloped edge
        _ellipse(d, p, -0.72 + i * 0.48, -0.25, 0.24, 0.1, s, fill=main)


def _traffic_light(d, p, s, main, rng):
    _rect(d, p, -0.06, 0.55, 0.06, 1.0, fill=(70, 70, 70))
    _rect(d, p, -0.3, -0.95, 0.3, 0.58, fill=main)
    for y, colour in ((-0.62, (230, 30, 30)), (-0.18, (240, 200, 30)), (0.26, (40, 210, 70))):
        _ellipse(d, p, 0, y, 0.19, 0.19, s, fill=colour)


def _mushroom(d, p, s, main, rng):
    _rect(d, p, -0.2, -0.1, 0.2, 0.85, fill=(235, 220, 190))
    x0, y0 = p(-0.85, -0.75)
    x1, y1 = p(0.85, 0.45)
    d.chord([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], start=180, end=360, fill=main)
    for cx, cy in ((-0.45, -0.28), (0.05, -0.55), (0.45, -0.25), (-0.05, -0.2)):
        _ellipse(d, p, cx, cy, 0.1, 0.08, s, fill=(250, 250, 245))


def _strawberry(d, p, s, main, rng):
    pts = [(-0.7, -0.35), (-0.55, -0.6), (0.0, -0.65), (0.55, -0.6), (0.7, -0.35), (0.45, 0.3), (0.0, 0.85),
           (-0.45, 0.3)]
    _poly(d, p, pts, fill=main)
    for cx, cy in ((-0.35, -0.3), (0.0, -0.35), (0.35, -0.3), (-0.2, 0.05), (0.2, 0.05), (0.0, 0.4)):
        _ellipse(d, p, cx, cy, 0.05, 0.06, s, fill=(250, 230, 120))
    _poly(d, p, [(-0.5, -0.6), (0.0, -0.95), (0.5, -0.6), (0.0, -0.5)], fill=(40, 150, 50))  # leaves


def _banana(d, p, s, main, rng):
    outer = [(0.95 * math.cos(a), 0.95 * math.sin(a) - 0.35) for a in np.linspace(0.2, math.pi - 0.2, 12)]
    inner = [(0.7 * math.cos(a), 0.55 * math.sin(a) - 0.3) for a in np.linspace(math.pi - 0.3, 0.3, 12)]
    _poly(d, p, outer + inner, fill=main)
    for a in (0.2, math.pi - 0.2):
        _ellipse(d, p, 0.93 * math.cos(a), 0.93 * math.sin(a) - 0.38, 0.08, 0.08, s, fill=(90, 60, 20))


#: (draw function, default colour, relative size) per ImageNet index.
_OBJECTS: dict[int, tuple[Draw, RGB, float]] = {
    1: (_goldfish, (245, 120, 20), 1.0),
    404: (_airliner, (225, 228, 235), 1.15),
    779: (_school_bus, (245, 190, 20), 1.05),
    805: (_soccer_ball, (245, 245, 245), 0.9),
    849: (_teapot, (150, 90, 60), 0.95),
    879: (_umbrella, (200, 30, 60), 1.05),
    920: (_traffic_light, (45, 45, 50), 1.0),
    947: (_mushroom, (205, 35, 35), 0.95),
    949: (_strawberry, (215, 25, 40), 0.85),
    954: (_banana, (245, 215, 50), 1.0),
}


def _draw_object(canvas: Image.Image, class_index: int, rng: np.random.Generator, *, colour: RGB | None,
                 centre: tuple[float, float], size: float, mask: Image.Image | None = None) -> None:
    draw_fn, default, rel = _OBJECTS[class_index]
    main = _jitter(rng, colour if colour is not None else default, 0.06 if colour is not None else 0.1)
    angle = math.radians(rng.uniform(-20, 20))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    half = size * rel / 2
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = centre

    def p(x: float, y: float) -> tuple[float, float]:
        x *= flip
        return (cx + half * (x * ca - y * sa), cy + half * (x * sa + y * ca))

    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw_fn(ImageDraw.Draw(layer), p, half, main, rng)
    canvas.paste(layer, (0, 0), layer)
    if mask is not None:
        mask.paste(255, (0, 0), layer)


# ---------------------------------------------------------------------------------------------- contexts
def _gradient(top: RGB, bottom: RGB, n: int = DRAW_SIZE) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None, None]
    col = np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t
    return np.broadcast_to(col, (n, n, 3)).copy()


def _noise(rng, arr: np.ndarray, amount: float) -> np.ndarray:
    return arr + rng.normal(0, amount, arr.shape[:2])[..., None]


def _backdrop(rng) -> np.ndarray:
    """The base context: a plain studio-photo backdrop in a muted light tone."""
    h = rng.uniform(0, 1)
    top = colorsys.hsv_to_rgb(h, rng.uniform(0.03, 0.15), rng.uniform(0.75, 0.95))
    bottom = colorsys.hsv_to_rgb(h, rng.uniform(0.03, 0.15), rng.uniform(0.6, 0.85))
    return _gradient(tuple(c * 255 for c in top), tuple(c * 255 for c in bottom))


def _ground(rng, sky: RGB, ground: RGB, horizon: float, texture: float) -> np.ndarray:
    n = DRAW_SIZE
    arr = _gradient(_jitter(rng, sky), tuple(int(c * 0.9) for c in sky))
    h = int(n * horizon)
    g = _gradient(_jitter(rng, ground), tuple(int(c * 0.8) for c in ground))[: n - h]
    arr[h:] = g
    arr[h:] = _noise(rng, arr[h:], texture)
    return arr


def _background(context: str, rng) -> np.ndarray:
    n = DRAW_SIZE
    if context == "in_the_grass":
        arr = _ground(rng, (150, 190, 230), (70, 150, 50), rng.uniform(0.1, 0.3), 14)
        for _ in range(60):  # blades
            x, y = rng.integers(0, n, 2)
            arr[max(0, y - 4):y, x] = (40, 120 + rng.integers(0, 60), 30)
        return arr
    if context == "in_the_beach":
        arr = _ground(rng, (120, 180, 240), (230, 210, 160), rng.uniform(0.35, 0.5), 8)
        sea = int(n * rng.uniform(0.28, 0.34))
        arr[sea:sea + 6] = (40, 110, 190)
        return arr
    if context == "in_the_forest":
        arr = _gradient((40, 90, 40), (30, 60, 25))
        for _ in range(7):  # trunks
            x = rng.integers(0, n)
            w = rng.integers(2, 6)
            arr[:, x:x + w] = (90 + rng.integers(0, 30), 60, 30)
        for _ in range(25):  # leaves
            x, y = rng.integers(0, n, 2)
            r = rng.integers(3, 8)
            yy, xx = np.ogrid[:n, :n]
            arr[(yy - y) ** 2 + (xx - x) ** 2 < r * r * (y < n * 0.5)] = (30, 110 + rng.integers(0, 50), 40)
        return _noise(rng, arr, 6)
    if context == "in_the_water":
        arr = _gradient((60, 140, 210), (20, 70, 150))
        for _ in range(14):  # waves
            x, y = rng.integers(0, n, 2)
            arr[y, max(0, x - 5):x + 5] = (170, 210, 245)
        return _noise(rng, arr, 5)
    if context == "on_the_road":
        arr = _ground(rng, (170, 190, 210), (85, 85, 90), rng.uniform(0.15, 0.3), 7)
        y = int(n * rng.uniform(0.7, 0.85))
        for x in range(0, n, 12):
            arr[y:y + 2, x:x + 7] = (240, 240, 240) if rng.random() < 0.6 else (240, 200, 40)
        return arr
    if context == "on_the_rocks":
        arr = _gradient((150, 170, 190), (120, 110, 100))
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.integers(0, n, 2)
            r = rng.integers(6, 16)
            g = int(rng.integers(80, 150))
            pts = [(x + r * math.cos(a) * rng.uniform(0.6, 1.1), y + r * math.sin(a) * rng.uniform(0.6, 1.1))
                   for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
            d.polygon(pts, fill=(g, g - 5, g - 15), outline=(50, 50, 50))
        return _noise(rng, np.asarray(img, float), 6)
    if context == "in_the_snow":
        return _noise(rng, _ground(rng, (205, 210, 220), (240, 243, 248), rng.uniform(0.3, 0.5), 4), 3)
    if context == "in_the_rain":
        return _gradient((95, 105, 120), (70, 75, 85))
    if context == "at_night":
        arr = _gradient((10, 15, 45), (5, 5, 20))
        for _ in range(12):
            x, y = rng.integers(0, n, 2)
            arr[y, x] = (230, 230, 200)
        return arr
    if context == "at_dusk":
        return _gradient((90, 60, 130), (240, 130, 60))
    if context == "studio_lighting":
        yy, xx = np.mgrid[:n, :n]
        r = np.hypot(yy - n * 0.45, xx - n / 2) / n
        spot = np.clip(1.2 - 2.2 * r, 0.05, 1)[..., None]
        return 255 * spot * np.asarray(_jitter(rng, (235, 235, 240)), float)[None, None] / 255
    return _backdrop(rng)


def _person(img: Image.Image, rng, x: float) -> None:
    d = ImageDraw.Draw(img)
    n = DRAW_SIZE
    skin = _jitter(rng, ((240, 200, 170), (200, 150, 110), (130, 90, 60))[rng.integers(0, 3)])
    shirt = tuple(int(c) for c in rng.integers(20, 230, 3))
    h = rng.uniform(0.75, 0.9) * n
    top = n - h
    d.ellipse([x - 5, top, x + 5, top + 10], fill=skin)
    d.rectangle([x - 7, top + 10, x + 7, top + 0.55 * h], fill=shirt)
    d.rectangle([x - 6, top + 0.55 * h, x + 6, n], fill=(50, 60, 90))
    d.line([(x, top + 0.55 * h), (x, n)], fill=(30, 30, 40), width=1)


def _flower(img: Image.Image, rng, x: float) -> None:
    d = ImageDraw.Draw(img)
    n = DRAW_SIZE
    y = rng.uniform(0.3, 0.5) * n
    d.line([(x, y), (x, n)], fill=(40, 140, 40), width=2)
    d.ellipse([x - 2, y + 12, x + 5, y + 16], fill=(50, 160, 50))
    petal = _jitter(rng, ((240, 90, 160), (250, 250, 250), (160, 80, 220), (250, 140, 40))[rng.integers(0, 4)])
    for k in range(6):
        a = k * math.pi / 3
        px, py = x + 5 * math.cos(a), y + 5 * math.sin(a)
        d.ellipse([px - 3.5, py - 3.5, px + 3.5, py + 3.5], fill=petal)
    d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=(250, 210, 40))


def _weather_and_light(context: str, arr: np.ndarray, rng) -> np.ndarray:
    n = DRAW_SIZE
    if context == "in_the_snow":
        arr = arr * 0.6 + 0.4 * 245
        for _ in range(45):
            x, y = rng.integers(0, n, 2)
            arr[y:y + 2, x:x + 2] = 250
    elif context == "in_the_rain":
        arr = arr * 0.75 + 0.25 * np.array([90, 100, 115])
        for _ in range(35):
            x, y = rng.integers(0, n, 2)
            for k in range(6):
                yy, xx = y + k, x - k // 2
                if 0 <= yy < n and 0 <= xx < n:
                    arr[yy, xx] = arr[yy, xx] * 0.4 + 0.6 * np.array([190, 200, 220])
    elif context == "in_the_fog":
        a = rng.uniform(0.55, 0.7)
        arr = arr * (1 - a) + a * np.array([215, 218, 222])
    elif context == "in_bright_sunlight":
        arr = np.clip(arr * rng.uniform(1.25, 1.45) + np.array([30, 20, -5]), 0, 255)
        yy, xx = np.mgrid[:n, :n]
        arr += 60 * np.exp(-((yy - 4) ** 2 + (xx - n + 4) ** 2) / 60.0)[..., None]
    elif context == "at_night":
        arr = arr * rng.uniform(0.25, 0.35) * np.array([0.8, 0.85, 1.3])
    elif context == "at_dusk":
        arr = arr * rng.uniform(0.5, 0.6) * np.array([1.25, 0.85, 0.8])
    return arr


def _style(context: str, img: Image.Image, rng) -> Image.Image:
    n = DRAW_SIZE
    if context == "oil_painting":
        img = img.filter(ImageFilter.ModeFilter(5)).quantize(12, dither=Image.Dither.NONE).convert("RGB")
        arr = np.asarray(img, float)
        strokes = rng.normal(0, 18, (n // 2, n))  # horizontal brush texture
        arr += np.repeat(strokes, 2, axis=0)[..., None] * np.array([1.0, 0.9, 0.7])
        hsv = np.asarray(Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert("HSV"), float)
        hsv[..., 1] = np.clip(hsv[..., 1] * 1.4, 0, 255)
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    if context == "pencil_sketch":
        grey = img.convert("L").filter(ImageFilter.FIND_EDGES)
        edges = np.asarray(grey, float)
        paper = 245 - 3.0 * edges - np.abs(rng.normal(0, 6, (n, n)))
        for _ in range(20):  # hatching
            x, y = rng.integers(0, n, 2)
            for k in range(5):
                if 0 <= y + k < n and 0 <= x + k < n:
                    paper[y + k, x + k] -= 40
        return Image.fromarray(np.repeat(paper.clip(0, 255)[..., None], 3, axis=2).astype(np.uint8))
    if context == "embroidery":
        small = img.resize((n // 4, n // 4), Image.Resampling.BOX)
        arr = np.asarray(small, float)
        fabric = np.asarray(_jitter(rng, (235, 225, 200)), float)
        out = np.broadcast_to(fabric, (n, n, 3)).copy()
        stitch = np.zeros((4, 4), bool)
        i = np.arange(4)
        stitch[i, i] = stitch[i, 3 - i] = stitch[i, (i + 1) % 4] = stitch[i, (2 - i) % 4] = True  # a thick X per cell
        cells = np.kron(np.ones((n // 4, n // 4), bool), stitch)
        big = np.kron(arr, np.ones((4, 4, 1)))
        out[cells] = big[cells] * 0.9
        return Image.fromarray(out.clip(0, 255).astype(np.uint8))
    return img


# ---------------------------------------------------------------------------------------------- render
def _scene(class_index: int, context: str, seed: int, with_mask: bool) -> tuple[Image.Image, Image.Image | None]:
    _world_class(class_index)
    if context not in CONTEXTS:
        context = get_shift(context).id
        if context not in CONTEXTS:
            raise ValueError(f"context {context!r} cannot be drawn; the world draws {', '.join(CONTEXTS)}")
    rng = _rng(class_index, context, seed)
    n = DRAW_SIZE
    style = context in ("oil_painting", "pencil_sketch", "embroidery")
    scene_ctx = "base" if style else context
    arr = _background(scene_ctx, rng)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    mask = Image.new("L", (n, n), 0) if with_mask else None
    size = rng.uniform(0.55, 0.8) * n
    cx, cy = rng.uniform(0.38, 0.62) * n, rng.uniform(0.4, 0.62) * n
    if context in ("person_and_a", "and_a_flower"):
        left = rng.random() < 0.5
        size *= 0.75
        cx = n * (0.64 if left else 0.36) + rng.uniform(-3, 3)
        (_person if context == "person_and_a" else _flower)(img, rng, n * (0.2 if left else 0.8))
    colour = COLOURS.get(context)
    _draw_object(img, class_index, rng, colour=colour, centre=(cx, cy), size=size, mask=mask)
    if scene_ctx != "base" or context in ("in_bright_sunlight",):
        arr = _weather_and_light(context, np.asarray(img, float), rng)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    img = _style(context, img, rng)
    if context == "base" or context in COLOURS or context in ("person_and_a", "and_a_flower"):
        img = Image.fromarray(_noise(rng, np.asarray(img, float), 3).clip(0, 255).astype(np.uint8))
    return img, mask


def render(class_index: int, context: str = "base", seed: int = 0, *, size: int = SIZE) -> Image.Image:
    """The world's image of a class in a context (a catalog shift id or name), a pure function of its arguments.

    Raises:
        ClassSpecError: the class is not one of :data:`WORLD_CLASSES`.
        ShiftError / ValueError: the context is not a catalog shift.
    """
    img, _ = _scene(class_index, context, seed, False)
    return img.resize((size, size), Image.Resampling.BOX) if size != DRAW_SIZE else img


def render_array(items: Sequence[tuple[int, str, int]], *, size: int = SIZE) -> np.ndarray:
    """Renders of ``(class_index, context, seed)`` triples as one ``uint8`` array ``(N, size, size, 3)``."""
    out = np.empty((len(items), size, size, 3), np.uint8)
    for i, (c, ctx, seed) in enumerate(items):
        out[i] = np.asarray(render(c, ctx, seed, size=size))
    return out


def object_hue(class_index: int, context: str = "base", seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A render at :data:`DRAW_SIZE` with the object's mask (for measuring what a shift does to the object)."""
    img, mask = _scene(class_index, context, seed, True)
    return img, np.asarray(mask) > 0


def contact_sheet(seed: int = 0, *, scale: int = 2) -> Image.Image:
    """Every class (columns) in every context (rows), as one picture."""
    n = SIZE * scale
    sheet = Image.new("RGB", (n * len(WORLD_CLASSES), n * len(CONTEXTS)), "white")
    for row, context in enumerate(CONTEXTS):
        for col, cls in enumerate(WORLD_CLASSES):
            sheet.paste(render(cls.index, context, seed).resize((n, n), Image.Resampling.NEAREST), (col * n, row * n))
    return sheet
