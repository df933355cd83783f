import json

import pytest

from dsi_bench.classes import ClassList, imagenet_classes, parse_class_spec
from dsi_bench.errors import ClassSpecError


def test_imagenet_classes_offline():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0].name == "tench" and classes[207].name == "golden retriever"
    assert [c.index for c in classes] == list(range(1000))


def test_imagenet_table_supplies_wnids_and_common_names(shared_data):
    classes = imagenet_classes(shared_data / "imagenet_classes.json")
    assert classes[0].wnid == "n01440764"
    assert classes[207].name == "Golden Retriever"
    wnids = [c.wnid for c in classes]
    assert wnids == sorted(wnids)  # sorted WordNet ids are the standard indices


def test_class_table_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("DSI_BENCH_IMAGENET_CLASSES", str(shared_data / "imagenet_classes.json"))
    assert imagenet_classes()[1].wnid == "n01443537"


@pytest.mark.parametrize(
    "spec, expected",
    [("0-3,207", [0, 1, 2, 3, 207]), ("207, 0-1", [207, 0, 1]), (5, [5]), ([3, 1, 3], [3, 1]), ("goldfish", [1])],
)
def test_parse_class_spec(spec, expected):
    assert parse_class_spec(spec, imagenet_classes()) == expected


def test_parse_all():
    assert len(parse_class_spec("all", imagenet_classes())) == 1000


@pytest.mark.parametrize("spec, message", [
    ("1000", "out of range"), ("5-2", "empty"), ("goldfsh", "Did you mean 'goldfish'"), ([-1], "out of range"),
])
def test_bad_class_specs(spec, message):
    with pytest.raises(ClassSpecError, match=message):
        parse_class_spec(spec, imagenet_classes())


def test_custom_class_lists(tmp_path):
    cl = ClassList.from_names(["cat", "dog"], ids=["c1", "d2"])
    assert cl.resolve("dog,c1") == [1, 0]
    (tmp_path / "c.txt").write_text("x1\tapple\nx2\tpear\n")
    cl = ClassList.from_file(tmp_path / "c.txt")
    assert cl.names == ["apple", "pear"] and cl[1].wnid == "x2"
    (tmp_path / "c.json").write_text(json.dumps(["a", "b", "c"]))
    assert len(ClassList.from_file(tmp_path / "c.json")) == 3
    with pytest.raises(ClassSpecError, match="2 class names but 1 ids"):
        ClassList.from_names(["a", "b"], ids=["x"])
    with pytest.raises(ClassSpecError, match="does not exist"):
        ClassList.from_file(tmp_path / "missing.txt")


def test_duplicate_ids_are_rejected():
    from dsi_bench.classes import ClassList
    from dsi_bench.errors import ClassSpecError

    with pytest.raises(ClassSpecError, match="id 'n1' is given to classes 0 and 2"):
        ClassList.from_names(["a", "b", "c"], ids=["n1", "n2", "n1"])
