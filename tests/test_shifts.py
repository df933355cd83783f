import pytest

from dsi_bench.errors import ShiftError
from dsi_bench.shifts import TOKEN, Shift, get_shift, list_shifts

RELEASE_DIRS = [
    "base", "in_the_grass", "in_the_beach", "in_the_forest", "in_the_water", "on_the_road", "on_the_rocks",
    "in_the_snow", "in_the_rain", "in_the_fog", "in_bright_sunlight", "at_night", "at_dusk", "studio_lighting",
    "blue", "green", "red", "yellow", "orange", "person_and_a", "and_a_flower", "oil_painting", "pencil_sketch",
    "embroidery",
]
PUBLISHED = {
    "base": "a photo of a <TOKEN>",
    "in_the_grass": "a photo of a <TOKEN> in the grass",
    "in_the_snow": "a photo of a <TOKEN> in the snow",
    "in_bright_sunlight": "a photo of a <TOKEN> in bright sunlight",
    "oil_painting": "an oil painting of a <TOKEN>",
}


def test_catalog_has_base_and_23_release_shifts():
    shifts = list_shifts()
    assert [s.id for s in shifts][0] == "base"
    assert sorted(s.id for s in shifts) == sorted(RELEASE_DIRS)
    for s in shifts:
        assert s.template.count(TOKEN) == 1
        assert s.group in {"none", "background", "weather", "lighting", "colour", "co-occurrence", "style"}
        assert s.version == "1"


def test_published_prompts_are_exact_and_the_rest_are_marked_ours():
    for s in list_shifts():
        if s.id in PUBLISHED:
            assert s.template == PUBLISHED[s.id] and s.source == "published"
        else:
            assert s.source == "dsi-bench"
    # 24 entries - 5 published prompts (base + 4 shifts) = 19 of ours
    assert sum(s.source == "dsi-bench" for s in list_shifts()) == 19


def test_catalog_ids_match_the_release_masks(shared_data):
    import numpy as np

    with np.load(shared_data / "imagenet_star_masks.npz") as masks:
        assert set(masks.files) == {s.id for s in list_shifts()}


@pytest.mark.parametrize("name", ["in the rain", "in_the_rain", "In The Rain", "  in-the-rain ", "rain"])
def test_get_shift_accepts_spellings(name):
    assert get_shift(name).id == "in_the_rain"


def test_prompt_fills_the_token():
    assert get_shift("in the snow").prompt("<dog-1>") == "a photo of a <dog-1> in the snow"
    assert get_shift("orange").prompt("cat") == "a photo of an orange cat"


def test_unknown_near_miss_raises_with_close_matches():
    with pytest.raises(ShiftError, match="Did you mean 'in_the_rain'"):
        get_shift("in the rian")


def test_custom_template_and_phrase_get_stable_ids():
    a = get_shift("a watercolor painting of a <TOKEN>")
    assert a.is_custom and a.template == "a watercolor painting of a <TOKEN>"
    assert a.id == get_shift("a  watercolor painting of a <TOKEN>").id  # whitespace-insensitive
    assert a.id.startswith("a_watercolor_painting_of_a_token-")
    b = get_shift("under water")
    assert b.template == "a photo of a <TOKEN> under water"
    assert b.id == get_shift("under water").id != a.id
    assert "." not in a.id and "/" not in a.id  # usable as folder names and sample keys


@pytest.mark.parametrize("bad", ["a <TOKEN> and a <TOKEN>", "a painting of <CLASS>", "", None])
def test_bad_templates_are_rejected(bad):
    with pytest.raises(ShiftError):
        get_shift(bad)


def test_list_shifts_filters():
    assert [s.id for s in list_shifts("in_the_*", group="weather")] == ["in_the_snow", "in_the_rain", "in_the_fog"]
    assert len(list_shifts(group="colour")) == 5
    with pytest.raises(ShiftError, match="unknown shift group"):
        list_shifts(group="weathr")


def test_shift_is_frozen_data():
    s = get_shift("base")
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        s.template = "x <TOKEN>"
    assert isinstance(s, Shift)


CAPTIONS = {
    "in_the_grass": "a photo in the grass", "in_the_beach": "a photo in the beach",
    "in_the_forest": "a photo in the forest", "in_the_water": "a photo in the water",
    "on_the_road": "a photo on the road", "on_the_rocks": "a photo on the rocks",
    "in_the_snow": "a photo in the snow", "in_the_rain": "a photo in the rain", "in_the_fog": "a photo in the fog",
    "in_bright_sunlight": "a photo in bright sunlight", "at_night": "a photo at night", "at_dusk": "a photo at dusk",
    "studio_lighting": "a photo in studio lighting", "blue": "a photo of something blue",
    "green": "a photo of something green", "red": "a photo of something red", "yellow": "a photo of something yellow",
    "orange": "a photo of something orange", "person_and_a": "a photo of a person",
    "and_a_flower": "a photo of a flower", "oil_painting": "an oil painting", "pencil_sketch": "a pencil sketch",
    "embroidery": "an embroidery",
}


def test_every_shift_has_an_object_free_caption_base_none():
    """The CLIP metric's reference rule scores the shift with a caption without the object."""
    assert get_shift("base").caption is None
    assert {s.id: s.caption for s in list_shifts() if s.id != "base"} == CAPTIONS
    for s in list_shifts():
        assert s.caption is None or TOKEN not in s.caption


def test_custom_shifts_get_a_derived_caption():
    from dsi_bench.shifts import shift_caption

    assert get_shift("a watercolor painting of a <TOKEN>").caption == "a watercolor painting"
    assert get_shift("under water").caption == "a photo under water"
    assert get_shift("a <TOKEN> under water").caption == "something under water"
    assert shift_caption("a photo of a <TOKEN>") is None
    # an explicit caption wins, and it does not change the id (not part of the sample key)
    assert Shift("x", "x", "a photo of a <TOKEN> x", "custom", caption="x!").caption == "x!"
