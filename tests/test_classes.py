import json

import pytest

from dsi_bench.classes import ClassList, imagenet_class_table, imagenet_classes, parse_class_spec
from dsi_bench.errors import ClassSpecError


def test_imagenet_classes_offline():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0].name == "tench" and classes[207].name == "Golden Retriever"
    assert [c.index for c in classes] == list(range(1000))


def test_imagenet_names_are_the_releases_common_names():
    """Item 4: the release's names (not torchvision's) name classes, tokens and prompts."""
    classes = imagenet_classes()
    assert classes[7].name == "rooster" and classes[84].name == "peafowl"
    assert sum(row["common_name"] != row["torchvision_name"] for row in imagenet_class_table()) == 362


def test_imagenet_wordnet_ids_work_offline_without_timm_or_env(monkeypatch):
    """Item 4: WordNet ids come from the shipped table, with timm hidden and no environment variable."""
    import sys

    from dsi_bench.memo import clear_caches

    monkeypatch.delenv("DSI_BENCH_IMAGENET_CLASSES", raising=False)
    for mod in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "timm", None)  # any import of timm now fails
    clear_caches()
    try:
        classes = imagenet_classes()
        assert classes[0].wnid == "n01440764" and classes[999].wnid == "n15075141"
        assert classes.resolve("n01514668") == [7]
        wnids = [c.wnid for c in classes]
        assert wnids == sorted(wnids)  # sorted WordNet ids are the standard indices
    finally:
        clear_caches()


def test_shipped_table_is_the_reference_table(shared_data):
    """The package's table carries exactly the reference's four columns."""
    reference = json.loads((shared_data / "imagenet_classes.json").read_text())
    keys = ("index", "wnid", "wordnet_label", "common_name")
    assert [{k: r[k] for k in keys} for r in imagenet_class_table()] == [{k: r[k] for k in keys} for r in reference]


def test_torchvision_names_resolve_as_aliases():
    from dsi_bench.models import ClassMap

    classes = imagenet_classes()
    assert classes.resolve("cock,peacock,Rooster") == [7, 84]
    # as written, torchvision's 'Cardigan' is the corgi; ignoring case, a class's own name wins: the sweater
    assert classes.resolve("Cardigan") == [264] and classes[264].name == "Cardigan Welsh Corgi"
    assert classes.resolve("cardigan") == [474] and classes.resolve("CARDIGAN") == [474]
    # class maps (model outputs by name) resolve the same way, and refuse a shared name
    assert ClassMap.from_entries(["cock", "n01440764", "Cardigan", None], classes).targets == [7, 0, 264, -1]
    with pytest.raises(Exception, match="ambiguous.*657 and 744"):
        ClassMap.from_entries(["missile"], classes)


@pytest.mark.parametrize("name, indices", [("missile", "657 and 744"), ("sunglasses", "836 and 837")])
def test_repeated_common_names_are_refused_not_guessed(name, indices):
    classes = imagenet_classes()
    with pytest.raises(ClassSpecError, match=f"ambiguous.*{indices}.*by index"):
        classes.resolve(name)
    assert classes.class_to_idx()[name] == int(indices.split()[0])  # documented: the first class


def test_release_token_strings_with_the_real_sd2_tokenizer(shared_data):
    """Every token string from the shipped table is one token id with SD2's tokenizer (REFERENCE.md)."""
    folder = shared_data / "sd2_tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip("the SD2 tokenizer files are not available")
    from transformers import CLIPTokenizer

    from dsi_bench.tokens import release_token_name

    tok = CLIPTokenizer.from_pretrained(str(folder))
    names = [release_token_name(c.name, c.index) for c in imagenet_classes()]
    assert names[7] == "<rooster-7>" and names[84] == "<peafowl-84>" and names[207] == "<Golden Retriever-207>"
    assert len(set(names)) == 1000
    tok.add_tokens(names)
    assert all(len(ids) == 1 for ids in tok(names, add_special_tokens=False).input_ids)
    from dsi_bench.shifts import list_shifts

    ids = tok.convert_tokens_to_ids(names)
    for shift in list_shifts():
        prompts = tok([shift.prompt(n) for n in names], add_special_tokens=False).input_ids
        assert all(p.count(i) == 1 for p, i in zip(prompts, ids)), shift.id


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
