"""The probe's phrase vocabulary: a few hundred natural-language shifts beyond the catalog, in groups.

Every phrase is an ordinary shift (:func:`~dsi_bench.shifts.get_shift`): a bare phrase ("on a frozen
lake") becomes ``"a photo of a <TOKEN> on a frozen lake"``, a template with ``<TOKEN>`` is kept as
written ("a watercolor painting of a <TOKEN>"), and the catalog's own 23 shifts are included under
their catalog names. :func:`load_phrases` reads a user's list from a text file in the same form.

The groups follow the kinds of shift the paper names (backgrounds, weather, lighting, colour,
co-occurrence, style) and add the ones a model also meets in the wild: materials, viewpoints and
distance, object states and sizes.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ShiftError
from .shifts import TOKEN, Shift, get_shift, list_shifts

__all__ = ["PHRASE_GROUPS", "Phrase", "list_phrases", "load_phrases"]

#: Groups of the built-in vocabulary, in display order ("catalog" holds the catalog's 23 shifts).
PHRASE_GROUPS = ("catalog", "background", "weather", "lighting", "material", "style", "viewpoint", "co-occurrence",
                 "state", "file")


@dataclass(frozen=True)
class Phrase:
    """One phrase of a probe: its text as written, its group, and the shift it resolves to."""

    text: str
    group: str
    shift: Shift

    @property
    def id(self) -> str:
        return self.shift.id


def _t(text: str) -> str:
    return text.replace("<T>", TOKEN)


_VOCABULARY: dict[str, tuple[str, ...]] = {
    "background": (
        "on a sandy beach", "in a desert", "in a dense jungle", "in a city street", "in a parking lot",
        "in a kitchen", "in a living room", "in an office", "in a classroom", "in a garage", "in a bathroom",
        "in a bedroom", "on a wooden table", "on a kitchen counter", "on a white background", "on a black background",
        "in a supermarket", "in a museum", "in a library", "in a swimming pool", "under water", "in a cave",
        "on a mountain top", "in a wheat field", "in a flower field", "on a frozen lake", "in a swamp",
        "on a football field", "on a highway", "at a train station", "at an airport", "in a harbor",
        "in a playground", "on a rooftop", "in a subway station", "in a forest clearing", "in a snowy forest",
        "on a brick wall", "in a junkyard", "in outer space", "on the moon", "in a laboratory",
        "in a greenhouse", "at a construction site", "in a barn", "in a restaurant", "at a market stall",
        "in a shop window", "on a bookshelf", "in a toy box",
    ),
    "weather": (
        "in a thunderstorm", "in heavy snow", "in a blizzard", "in a sandstorm", "in light rain", "in a hailstorm",
        "in a tornado", "under a rainbow", "on a cloudy day", "on a sunny day", "in morning mist", "in smoke",
        "in a flood", "covered in frost", "covered in snow", "covered in dew", "in strong wind", "in the haze",
        "in drizzle", "under dark clouds", "in the rain at night", "in the snow at night", "in the fog at night",
        "in the fog at dusk", "in the snow at dusk", "in the rain at dusk",
    ),
    "lighting": (
        "in dim light", "in candlelight", "in neon light", "in moonlight", "at sunrise", "at sunset",
        "at golden hour", "in harsh shadows", "backlit", "in silhouette", "under a spotlight",
        "under fluorescent light", "in blue light", "in red light", "in green light", "under a street lamp",
        "lit by a campfire", "in a dark room", "overexposed", "underexposed", "with lens flare", "with a flash",
        "in dappled sunlight", "under disco lights", "at twilight", "at midnight", "in the shade",
        "in bright sunlight at noon", "at night with headlights", "under ultraviolet light",
    ),
    "material": (
        "made of glass", "made of wood", "made of metal", "made of paper", "made of plastic", "made of stone",
        "made of clay", "made of ice", "made of gold", "made of silver", "made of chocolate", "made of lego",
        "made of yarn", "made of cardboard", "made of marble", "made of rubber", "made of felt", "made of crystal",
        "made of leaves", "made of sand", "made of bread", "made of candy", "made of fabric", "made of copper",
        _t("a papercraft <T>"), _t("a plush toy <T>"), _t("a wooden carving of a <T>"),
        _t("a bronze statue of a <T>"), _t("a porcelain figurine of a <T>"), _t("an origami <T>"),
        _t("a balloon shaped like a <T>"), _t("a sand sculpture of a <T>"), _t("an ice sculpture of a <T>"),
        _t("a knitted <T>"), _t("a stained glass window of a <T>"), _t("a mosaic of a <T>"),
    ),
    "style": (
        _t("a watercolor painting of a <T>"), _t("a charcoal drawing of a <T>"), _t("a cartoon of a <T>"),
        _t("an anime drawing of a <T>"), _t("a pixel art <T>"), _t("a 3d render of a <T>"),
        _t("a low poly model of a <T>"), _t("a child's drawing of a <T>"), _t("a comic book drawing of a <T>"),
        _t("an impressionist painting of a <T>"), _t("a cubist painting of a <T>"), _t("a pop art print of a <T>"),
        _t("a woodcut print of a <T>"), _t("an engraving of a <T>"), _t("a tattoo of a <T>"),
        _t("a graffiti of a <T>"), _t("a sticker of a <T>"), _t("an emoji of a <T>"), _t("a logo of a <T>"),
        _t("a blueprint of a <T>"), _t("a black and white photo of a <T>"), _t("a sepia photo of a <T>"),
        _t("a vintage photo of a <T>"), _t("a polaroid photo of a <T>"), _t("an infrared photo of a <T>"),
        _t("a thermal image of a <T>"), _t("an x-ray of a <T>"), _t("a blurry photo of a <T>"),
        _t("a grainy photo of a <T>"), _t("a jpeg compressed photo of a <T>"), _t("a low resolution photo of a <T>"),
        _t("a video game screenshot of a <T>"), _t("a chalk drawing of a <T>"), _t("a crayon drawing of a <T>"),
        _t("a sketch of a <T>"), _t("an ink drawing of a <T>"), _t("a painting of a <T>"),
        _t("an oil painting of a <T> at night"), _t("a pencil sketch of a <T> in the snow"),
        _t("an embroidery of a <T> in the grass"), _t("a mural of a <T>"), _t("a silhouette of a <T>"),
        _t("a line drawing of a <T>"), _t("a neon sign of a <T>"), _t("a hologram of a <T>"),
    ),
    "viewpoint": (
        _t("a close-up photo of a <T>"), _t("an extreme close-up photo of a <T>"), _t("a macro photo of a <T>"),
        _t("a photo of a <T> far away"), _t("a photo of a tiny <T> in the distance"),
        _t("an aerial photo of a <T>"), _t("a photo of a <T> seen from above"), _t("a photo of a <T> seen from below"),
        _t("a photo of a <T> seen from behind"), _t("a side view photo of a <T>"), _t("a photo of an upside-down <T>"),
        _t("a photo of a rotated <T>"), _t("a cropped photo of a <T>"), _t("a photo of a partly hidden <T>"),
        _t("a photo of a <T> behind a fence"), _t("a photo of a <T> through a window"),
        _t("a photo of a <T> reflected in a mirror"), _t("a photo of a <T> reflected in water"),
        _t("a fisheye photo of a <T>"), _t("a wide angle photo of a <T>"), _t("a tilted photo of a <T>"),
        _t("a motion blurred photo of a <T>"), _t("an out of focus photo of a <T>"),
        _t("a photo of a <T> in the corner of the frame"), _t("a photo of many <T>s"),
        _t("a photo of a <T> in a crowd"), _t("a photo of a <T> through binoculars"),
        _t("a security camera photo of a <T>"), _t("a satellite photo of a <T>"), _t("a selfie with a <T>"),
    ),
    "co-occurrence": (
        "and a dog", "and a cat", "and a horse", "and a bird", "and a car", "and a bicycle", "and a tree",
        "and a child", "and a chair", "and a laptop", "and a phone", "and a cup of coffee", "and a book",
        "and a bottle", "and an apple", "and a pizza", "and a ball", "and a boat", "and a train",
        "and a candle", "and a clock", "and a guitar", "and a teddy bear", "and a pumpkin", "and a cake",
        "next to a person", "held by a person", "held by a child", "on a person's lap", "in a person's hand",
        "next to a fire", "next to a river", "among flowers", "among rocks", "surrounded by birds",
        "surrounded by people", "in a box", "in a bag", "in a basket", "on a plate", "on a shelf",
        "in a cage", "on a shopping cart", "with a price tag", "with text written on it",
    ),
    "state": (
        _t("a photo of a broken <T>"), _t("a photo of a dirty <T>"), _t("a photo of a wet <T>"),
        _t("a photo of a burning <T>"), _t("a photo of a melting <T>"), _t("a photo of a rusty <T>"),
        _t("a photo of an old <T>"), _t("a photo of a brand new <T>"), _t("a photo of a painted <T>"),
        _t("a photo of a damaged <T>"), _t("a photo of a half-eaten <T>"), _t("a photo of a sliced <T>"),
        _t("a photo of a crushed <T>"), _t("a photo of a frozen <T>"), _t("a photo of a glowing <T>"),
        _t("a photo of a transparent <T>"), _t("a photo of a striped <T>"), _t("a photo of a spotted <T>"),
        _t("a photo of a shiny <T>"), _t("a photo of a fluffy <T>"), _t("a photo of a tiny <T>"),
        _t("a photo of a giant <T>"), _t("a photo of a miniature <T>"), _t("a photo of a toy <T>"),
        _t("a photo of a baby <T>"), _t("a photo of a wrapped <T>"), _t("a photo of a <T> in pieces"),
        _t("a photo of a <T> covered in mud"), _t("a photo of a <T> covered in paint"),
        _t("a photo of a <T> wrapped in plastic"), _t("a photo of a <T> upside down"),
        _t("a photo of a <T> half buried in sand"), _t("a photo of a <T> on fire"),
        _t("a photo of a purple <T>"), _t("a photo of a pink <T>"), _t("a photo of a black <T>"),
        _t("a photo of a white <T>"), _t("a photo of a rainbow colored <T>"), _t("a photo of a golden <T>"),
        _t("a photo of a blue <T> at night"), _t("a photo of a red <T> in the snow"),
        _t("a photo of a green <T> in the forest"),
    ),
}


def _phrase(text: str, group: str) -> Phrase:
    return Phrase(text=text, group=group, shift=get_shift(text))


def list_phrases(pattern: str = "*", *, group: str | None = None, catalog: bool = True) -> list[Phrase]:
    """The built-in probe vocabulary, optionally filtered.

    Args:
        pattern: ``fnmatch`` pattern on the phrase's text ("*night*").
        group: keep one of :data:`PHRASE_GROUPS` (``"catalog"``: the catalog's 23 shifts).
        catalog: include the catalog's 23 shifts (group ``"catalog"``).

    Returns:
        Phrases in group order, each resolved to its shift (no two with the same shift id).

    Raises:
        ShiftError: an unknown group.
    """
    if group is not None and group not in PHRASE_GROUPS[:-1]:
        raise ShiftError(f"unknown phrase group {group!r}; choose one of {', '.join(PHRASE_GROUPS[:-1])}")
    rows = [(s.name, "catalog") for s in list_shifts() if s.id != "base"] if catalog else []
    rows += [(text, g) for g, texts in _VOCABULARY.items() for text in texts]
    out, seen = [], set()
    for text, g in rows:
        if (group is None or g == group) and fnmatch.fnmatchcase(text, pattern):
            p = _phrase(text, g)
            if p.id not in seen:
                seen.add(p.id)
                out.append(p)
    return out


def load_phrases(path: str | os.PathLike) -> list[Phrase]:
    """Phrases from a text file: one per line (a bare phrase or a template with ``<TOKEN>``); blank lines and
    lines starting with ``#`` are skipped. Repeats are kept (the probe merges phrases that are the same shift,
    and says how many).

    Raises:
        ShiftError: the file cannot be read, holds no phrase, or a line is not a valid shift (its line number
            is named).
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ShiftError(f"cannot read the phrase file {os.fspath(path)!r} ({e}); give a UTF-8 text file with one "
                         "phrase per line") from e
    out = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            phrase = _phrase(text, "file")
        except ShiftError as e:
            raise ShiftError(f"{os.fspath(path)}, line {number}: {e}") from e
        if phrase.id == "base":
            raise ShiftError(f"{os.fspath(path)}, line {number}: {text!r} is the base shift itself; every phrase is "
                             "compared with base, so leave it out")
        out.append(phrase)
    if not out:
        raise ShiftError(f"the phrase file {os.fspath(path)!r} holds no phrase; write one per line, e.g. "
                         "'on a frozen lake' or 'a watercolor painting of a <TOKEN>'")
    return out
