"""The world's renderer: deterministic, in ImageNet's label space, in the catalog's wording, and each
shift does to the pixels what its words say."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from dsi_bench.world.scene import (
    COLOURS,
    CONTEXTS,
    SIZE,
    WORLD_CLASSES,
    caption,
    contact_sheet,
    object_hue,
    render,
    render_array,
)


def test_every_class_renders_in_every_catalog_context_deterministically():
    from dsi_bench.shifts import list_shifts

    assert set(CONTEXTS) == {s.id for s in list_shifts()} and len(CONTEXTS) == 24
    for ctx in CONTEXTS:
        for cls in WORLD_CLASSES[:3]:
            a = np.asarray(render(cls.index, ctx, 5))
            assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
            assert np.array_equal(a, np.asarray(render(cls.index, ctx, 5)))
            assert not np.array_equal(a, np.asarray(render(cls.index, ctx, 6)))  # the seed moves pose and colour


def test_the_world_speaks_imagenet_labels_and_the_catalog_wording():
    from dsi_bench.classes import imagenet_class_table

    table = {row["index"]: row for row in imagenet_class_table()}
    assert len({c.index for c in WORLD_CLASSES}) == 10
    for cls in WORLD_CLASSES:
        assert table[cls.index]["wnid"] == cls.wnid and table[cls.index]["common_name"] == cls.name
    assert caption(779, "in_the_snow") == "a photo of a school bus in the snow"
    assert caption(1, "orange") == "a photo of an orange goldfish"
    assert caption(954, "pencil sketch") == "a pencil sketch of a banana"


def test_a_class_outside_the_world_is_refused_by_name():
    from dsi_bench.errors import ClassSpecError

    with pytest.raises(ClassSpecError, match="207.*not in the world.*school bus"):
        render(207)


def _stats(context: str, n: int = 60):
    arr = render_array([(WORLD_CLASSES[i % 10].index, context, i) for i in range(n)]).astype(float) / 255
    grey = arr.mean(-1)
    return grey.mean(), grey.reshape(n, -1).std(1).mean()


def test_lighting_and_weather_move_brightness_and_contrast_the_right_way():
    base_b, base_c = _stats("base")
    for dark in ("at_night", "at_dusk"):
        assert _stats(dark)[0] < base_b - 0.15
    fog_b, fog_c = _stats("in_the_fog")
    snow_b, _ = _stats("in_the_snow")
    assert fog_c < 0.6 * base_c and fog_b > base_b - 0.02
    assert snow_b > base_b


def test_colour_shifts_move_the_objects_hue():
    def hue_distance(rgb, target):
        h = colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))[0]
        t = colorsys.rgb_to_hsv(*(np.asarray(target) / 255))[0]
        return min(abs(h - t), 1 - abs(h - t))

    for name, target in COLOURS.items():
        moved = 0
        for cls in WORLD_CLASSES:
            img, mask = object_hue(cls.index, name, 3)
            base, base_mask = object_hue(cls.index, "base", 3)
            shifted = np.median(np.asarray(img)[mask], axis=0)
            before = np.median(np.asarray(base)[base_mask], axis=0)
            after = hue_distance(shifted, target)
            moved += after < 0.05 or after < hue_distance(before, target)  # near the colour, or nearer than before
        assert moved >= 9, name


def test_contact_sheet_shows_every_class_in_every_context():
    sheet = contact_sheet(scale=1)
    assert sheet.size == (SIZE * 10, SIZE * 24)
