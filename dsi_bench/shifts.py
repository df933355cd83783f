"""The shift catalog: ids, prompt templates, groups, and name resolution.

A shift is data, not a branch: a frozen :class:`Shift` whose prompt template contains
``<TOKEN>``, the place where a class token (or a class name) goes. The catalog holds the
ImageNet* release's ``base`` plus its 23 shifts, with ids equal to the release's directory
names. Five prompts are the published ones; the other 19 are not published and were
derived by us from the directory names in the same style (``source="dsi-bench"``).

Every shift but ``base`` also has an object-free **caption** ("a photo in the snow", "an oil
painting"): what the CLIP metric compares an image with to decide whether the shift is there,
as the original metric does. The release does not publish its captions; ours are derived
from the prompts by :func:`shift_caption` (drop the object, keep the rest of the wording).

Custom shifts: any template containing ``<TOKEN>`` ("a watercolor painting of a <TOKEN>")
or a bare phrase ("under water" -> "a photo of a <TOKEN> under water") is a valid shift
with a stable id derived from its template; its caption is derived the same way.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass

from .errors import ShiftError, close_matches

__all__ = ["TOKEN", "Shift", "get_shift", "list_shifts", "shift_caption", "SHIFT_GROUPS"]

#: Placeholder for the class token in every prompt template.
TOKEN = "<TOKEN>"

#: The groups of the catalog, in display order.
SHIFT_GROUPS = ("none", "background", "weather", "lighting", "colour", "co-occurrence", "style", "custom")


@dataclass(frozen=True)
class Shift:
    """One distribution shift.

    Attributes:
        id: stable identifier; for catalog shifts the ImageNet* directory name.
        name: display name.
        template: prompt template containing ``<TOKEN>`` exactly once.
        group: one of :data:`SHIFT_GROUPS`.
        version: bumped whenever a template changes, so cached samples never mix.
        source: ``"published"`` (the paper's prompt), ``"dsi-bench"`` (ours) or ``"custom"``.
        caption: the shift without the object ("a photo in the snow"), which the CLIP metric's
            reference rule scores the shift with; ``None`` for ``base``. Derived from the template
            by :func:`shift_caption` unless given. (Not part of the sample key: it does not
            change a pixel.)
    """

    id: str
    name: str
    template: str
    group: str
    version: str = "1"
    source: str = "dsi-bench"
    caption: str | None = None

    def __post_init__(self) -> None:
        if self.template.count(TOKEN) != 1:
            raise ShiftError(
                f"prompt template {self.template!r} must contain {TOKEN} exactly once, where the "
                f"class goes, e.g. 'a watercolor painting of a {TOKEN}'"
            )
        if self.caption is None and self.group != "none":
            object.__setattr__(self, "caption", shift_caption(self.template))

    def prompt(self, token: str) -> str:
        """The prompt for one class: the template with ``<TOKEN>`` replaced by ``token``."""
        return self.template.replace(TOKEN, token)

    @property
    def is_custom(self) -> bool:
        return self.source == "custom"


def _photo(suffix: str) -> str:
    return f"a photo of a {TOKEN} {suffix}"


_ARTICLE = r"(?:a|an|the)"


def shift_caption(template: str) -> str | None:
    """The object-free caption of a prompt template, in the prompts' own words.

    ``"a photo of a <TOKEN> in the snow"`` -> ``"a photo in the snow"``; ``"an oil painting of a
    <TOKEN>"`` -> ``"an oil painting"``; ``"a photo of a red <TOKEN>"`` -> ``"a photo of something
    red"``; ``"a photo of a person and a <TOKEN>"`` -> ``"a photo of a person"``; ``"a photo of a
    <TOKEN> and a flower"`` -> ``"a photo of a flower"``. Anything else: the article and token
    become ``"something"``. ``None`` when nothing but the object is left (``"a photo of a <TOKEN>"``).
    """
    text = " ".join(template.split())
    tok = re.escape(TOKEN)
    rules = [
        (rf"^(.*) of {_ARTICLE} {tok} and (.+)$", r"\1 of \2"),  # ... of a <T> and a flower
        (rf"^(.*) and {_ARTICLE} {tok}$", r"\1"),  # a photo of a person and a <T>
        (rf"^(.*) of {_ARTICLE} {tok} (.+)$", r"\1 \2"),  # a photo of a <T> in the snow
        (rf"^(.*) of {_ARTICLE} {tok}$", r"\1"),  # an oil painting of a <T>
        (rf"^(.*) of {_ARTICLE} ([\w-]+) {tok}$", r"\1 of something \2"),  # a photo of a red <T>
    ]
    for pattern, repl in rules:
        if re.match(pattern, text):
            caption = re.sub(pattern, repl, text).strip()
            break
    else:
        caption = re.sub(rf"(?:\b{_ARTICLE} )?{tok}", "something", text).strip()
    caption = " ".join(caption.split())
    return None if caption in ("", "a photo", "something", "a photo of something") else caption


# (id, display name, template, group, source)
# Each shift's object-free caption is derived by shift_caption (a test pins them all).
_CATALOG_ROWS = [
    ("base", "base", f"a photo of a {TOKEN}", "none", "published"),
    # background
    ("in_the_grass", "in the grass", _photo("in the grass"), "background", "published"),
    # The release's directory says "in the beach", not "on the beach"; we keep its wording.
    ("in_the_beach", "in the beach", _photo("in the beach"), "background", "dsi-bench"),
    ("in_the_forest", "in the forest", _photo("in the forest"), "background", "dsi-bench"),
    ("in_the_water", "in the water", _photo("in the water"), "background", "dsi-bench"),
    ("on_the_road", "on the road", _photo("on the road"), "background", "dsi-bench"),
    ("on_the_rocks", "on the rocks", _photo("on the rocks"), "background", "dsi-bench"),
    # weather
    ("in_the_snow", "in the snow", _photo("in the snow"), "weather", "published"),
    ("in_the_rain", "in the rain", _photo("in the rain"), "weather", "dsi-bench"),
    ("in_the_fog", "in the fog", _photo("in the fog"), "weather", "dsi-bench"),
    # lighting
    ("in_bright_sunlight", "in bright sunlight", _photo("in bright sunlight"), "lighting", "published"),
    ("at_night", "at night", _photo("at night"), "lighting", "dsi-bench"),
    ("at_dusk", "at dusk", _photo("at dusk"), "lighting", "dsi-bench"),
    ("studio_lighting", "studio lighting", _photo("in studio lighting"), "lighting", "dsi-bench"),
    # colour
    ("blue", "blue", f"a photo of a blue {TOKEN}", "colour", "dsi-bench"),
    ("green", "green", f"a photo of a green {TOKEN}", "colour", "dsi-bench"),
    ("red", "red", f"a photo of a red {TOKEN}", "colour", "dsi-bench"),
    ("yellow", "yellow", f"a photo of a yellow {TOKEN}", "colour", "dsi-bench"),
    ("orange", "orange", f"a photo of an orange {TOKEN}", "colour", "dsi-bench"),
    # co-occurrence
    ("person_and_a", "a person and a", f"a photo of a person and a {TOKEN}", "co-occurrence", "dsi-bench"),
    ("and_a_flower", "and a flower", _photo("and a flower"), "co-occurrence", "dsi-bench"),
    # style
    ("oil_painting", "oil painting", f"an oil painting of a {TOKEN}", "style", "published"),
    ("pencil_sketch", "pencil sketch", f"a pencil sketch of a {TOKEN}", "style", "dsi-bench"),
    ("embroidery", "embroidery", f"an embroidery of a {TOKEN}", "style", "dsi-bench"),
]

_CATALOG: dict[str, Shift] = {
    row[0]: Shift(id=row[0], name=row[1], template=row[2], group=row[3], source=row[4]) for row in _CATALOG_ROWS
}

# Extra spellings users reach for; they resolve to catalog ids.
_ALIASES = {
    "on_the_beach": "in_the_beach",
    "none": "base",
    "clean": "base",
    "person": "person_and_a",
    "flower": "and_a_flower",
    "night": "at_night",
    "dusk": "at_dusk",
    "snow": "in_the_snow",
    "rain": "in_the_rain",
    "fog": "in_the_fog",
}


# Similarity (difflib ratio) above which an unknown phrase is taken for a misspelt catalog name.
_TYPO_CUTOFF = 0.85


def _normalize(name: str) -> str:
    """'In The Rain', 'in-the-rain', 'in_the_rain' -> 'in_the_rain'."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def list_shifts(pattern: str = "*", *, group: str | None = None) -> list[Shift]:
    """List catalog shifts whose id matches a glob pattern, in catalog order.

    Args:
        pattern: ``fnmatch`` pattern on the id (``"in_the_*"``), or ``"*"`` for all 24.
        group: keep only this group (``"weather"``, ``"style"``, ...).

    Returns:
        The matching :class:`Shift` objects, ``base`` first.

    Raises:
        ShiftError: if ``group`` is not a known group.
    """
    if group is not None and group not in SHIFT_GROUPS:
        raise ShiftError(f"unknown shift group {group!r}; choose one of {', '.join(SHIFT_GROUPS)}")
    return [
        s for s in _CATALOG.values() if fnmatch.fnmatchcase(s.id, pattern) and (group is None or s.group == group)
    ]


def _custom_shift(text: str) -> Shift:
    text = " ".join(text.split())
    template = text if TOKEN in text else _photo(text)
    stem = template.replace(TOKEN, "token") if TOKEN in text else text
    slug = _normalize(stem)[:48].strip("_") or "shift"
    digest = hashlib.sha256(template.encode("utf-8")).hexdigest()[:8]
    return Shift(id=f"{slug}-{digest}", name=text, template=template, group="custom", version="custom", source="custom")


def get_shift(name: str | Shift) -> Shift:
    """Resolve a shift name, id, alias, template or phrase to a :class:`Shift`.

    "in the rain", "in_the_rain" and "In The Rain" all give the catalog's ``in_the_rain``.
    A template containing ``<TOKEN>`` gives a custom shift. A phrase that is not in the
    catalog gives a custom shift ("under water" -> "a photo of a <TOKEN> under water"),
    unless it is a near-miss of a catalog name, which is treated as a typo.

    Args:
        name: what to resolve; a :class:`Shift` is returned unchanged.

    Returns:
        The shift.

    Raises:
        ShiftError: empty name, a near-miss of a catalog shift (with close matches), or a
            template with more than one ``<TOKEN>``.
    """
    if isinstance(name, Shift):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ShiftError(
            f"shift must be a non-empty string, got {name!r}; run `dsi-bench shifts` to list the catalog"
        )
    if TOKEN in name:
        return _custom_shift(name)
    if "<" in name or ">" in name:
        raise ShiftError(
            f"shift {name!r} looks like a template but has no {TOKEN} placeholder; write it as "
            f"e.g. 'a watercolor painting of a {TOKEN}'"
        )
    key = _normalize(name)
    if key in _CATALOG:
        return _CATALOG[key]
    if key in _ALIASES:
        return _CATALOG[_ALIASES[key]]
    for shift in _CATALOG.values():
        if _normalize(shift.name) == key:
            return shift
    known = list(_CATALOG) + list(_ALIASES)
    # Only a near-miss counts as a typo; "under water" vs "in_the_water" is a new shift.
    hint = close_matches(key, known, cutoff=_TYPO_CUTOFF)
    if hint:
        raise ShiftError(
            f"unknown shift {name!r}.{hint} To use it as a new shift anyway, pass a template: "
            f"'a photo of a {TOKEN} {name.strip()}'"
        )
    if key.replace("_", "").isdigit():
        raise ShiftError(f"unknown shift {name!r}; run `dsi-bench shifts` to list the catalog")
    return _custom_shift(name)
