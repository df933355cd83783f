"""The visual report: structure, counts against the results, resolvable images, nothing from the network."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dsi_bench.errors import SpecError


class _Page(HTMLParser):
    """Every tag with its attributes, in order."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag=None, **attrs) -> list[dict]:
        return [a for t, a in self.tags if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _counts(text: str) -> dict[str, int]:
    return {g: int(n) for g, n in re.findall(r'<span class="count" data-gallery="([^"]+)">(\d+)</span>', text)}


def _check_offline_and_resolvable(page: Path) -> _Page:
    """Every src/href is relative and resolves to a file (anchors aside); nothing names a network address."""
    text = page.read_text()
    parsed = _Page(text)
    for tag, attrs in parsed.tags:
        for attr in ("src", "href"):
            ref = attrs.get(attr)
            if ref is None or ref.startswith("#"):
                continue
            assert not re.match(r"^(https?:|//|data:|file:)", ref), f"{tag} {attr}={ref!r} in {page}"
            assert (page.parent / ref.split("#")[0]).is_file(), f"{tag} {attr}={ref!r} in {page} does not resolve"
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "@import" not in text and "url(" not in text
    return parsed


def test_report_of_one_model_matches_its_results(small_world_study, tmp_path):
    from dsi_bench.report import make_report
    from dsi_bench.results import Results

    path = small_world_study.out / "results" / "world-base.json"
    results = Results.load(path)
    report = make_report(path, tmp_path / "report", max_pairs=5, progress=False)
    page = report.index
    parsed = _check_offline_and_resolvable(page)
    text = page.read_text()
    assert [s["data-shift"] for s in parsed.find("section")] == list(results.shifts)
    counts = _counts(text)
    for shift, m in results.shifts.items():
        if shift == "base":
            continue
        assert counts[f"flips-{shift}"] == m["flips"] and counts[f"reverse-{shift}"] == m["reverse_flips"]
    # the galleries hold min(count, cap) pairs, each a base twin and its shifted sample with both images
    twins = parsed.find("figure", **{"class": "twin"})
    expected = sum(min(n, 5) for n in counts.values())
    assert len(twins) == expected > 0
    night = [t for t in twins if t["data-key"].startswith("at_night/")]
    m = results.shifts["at_night"]
    assert len(night) == min(m["flips"], 5) + min(m["reverse_flips"], 5)
    # the most confident mistakes first; metadata on click carries the prompt of the generated sample
    meta = [json.loads(t["data-meta"]) for t in night]
    assert all("at night" in m["prompt"] for m in meta)
    imgs = parsed.find("img")
    assert len(imgs) >= 2 * expected and report.thumbnails == len({i["src"] for i in imgs})
    assert report.bytes < 2_000_000 and not report.notes


def test_comparison_counts_shared_and_unique_flips(small_world_study, tmp_path):
    from dsi_bench.report import make_report
    from dsi_bench.results import Results, read_predictions_file

    paths = sorted((small_world_study.out / "results").glob("*.json"))
    report = make_report(paths, tmp_path / "cmp", max_pairs=3, progress=False)
    assert len(report.pages) == 3 and all(p.is_file() for p in report.pages.values())
    for page in [report.index, *report.pages.values()]:
        _check_offline_and_resolvable(page)
    counts = _counts(report.index.read_text())
    flips = {}
    for p in paths:
        preds = read_predictions_file(Results.load(p).predictions_source(p))
        base = {k: ok for k, ok in zip(preds["base"].keys, preds["base"].correct)}
        flips[p] = {k for k, ok in zip(preds["at_night"].keys, preds["at_night"].correct)
                    if not ok and base.get("base/" + k.split("/", 1)[1], False)}  # twin masked out: no pair
    shared = set.intersection(*flips.values())
    assert counts["shared-at_night"] == len(shared)
    for p in paths:
        name = Results.load(p)["model"]["name"].replace(":", "-")
        others = set().union(*(v for q, v in flips.items() if q != p))
        assert counts[f"only-{name}-at_night"] == len(flips[p] - others)


def test_report_refuses_what_it_cannot_show(small_world_study, tmp_path):
    from dsi_bench.cli import main
    from dsi_bench.report import make_report
    from dsi_bench.results import Results

    src = small_world_study.out / "results" / "world-base.json"
    bare = tmp_path / "bare.json"
    Results.load(src).save(bare, predictions=False)
    with pytest.raises(SpecError, match="records no per-sample predictions; re-run"):
        make_report(bare, tmp_path / "r1", progress=False)
    # predictions edited after the results were written
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(src, copy / "m.json")
    doc = json.loads(src.read_text())
    shutil.copy(src.parent / doc["predictions"]["path"], copy / doc["predictions"]["path"])
    (copy / "m.json").write_text(src.read_text())
    (copy / doc["predictions"]["path"]).write_bytes(b"changed")
    with pytest.raises(SpecError, match="changed since"):
        make_report(copy / "m.json", tmp_path / "r2", progress=False)
    # results on other data are not compared
    other = json.loads(src.read_text())
    other["data"]["fingerprint"] = "something-else"
    other["predictions"]["path"] = str((src.parent / doc["predictions"]["path"]).resolve())
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SpecError, match="same data"):
        make_report([src, tmp_path / "other.json"], tmp_path / "r3", progress=False)
    assert main(["report", str(bare), "--out", str(tmp_path / "r4")]) == 2
    assert main(["report", str(src), "--out", str(tmp_path / "r5"), "--max-pairs", "0"]) == 2


def test_report_without_the_images_says_so_and_references_none(small_world_study, tmp_path):
    from dsi_bench.report import make_report

    path = small_world_study.out / "results" / "world-base.json"
    with pytest.raises(SpecError, match="pass the folder that holds the data"):  # a root asked for is not ignored
        make_report(path, tmp_path / "r0", root=tmp_path / "nowhere", progress=False)
    gone = json.loads(path.read_text())  # the data moved away since the evaluation
    gone["run"]["dataset"]["root"] = str(tmp_path / "moved-away")
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    shutil.copy(path.parent / gone["predictions"]["path"], tmp_path / gone["predictions"]["path"])
    report = make_report(tmp_path / "gone.json", tmp_path / "r", progress=False)
    assert report.thumbnails == 0 and any("images not shown" in n for n in report.notes)
    parsed = _check_offline_and_resolvable(report.index)
    assert not parsed.find("img") and "no image" in report.index.read_text()
    # data moved: root= finds it again
    moved = tmp_path / "moved"
    shutil.copytree(small_world_study.out / "shards", moved)
    again = make_report(path, tmp_path / "r2", root=moved, progress=False)
    assert again.thumbnails > 0 and not again.notes


def test_leaderboard_links_each_models_report(small_world_study):
    board = small_world_study.leaderboard
    assert len(board["reports"]) == 3
    html = Path(board["html"]).read_text()
    for page in board["reports"].values():
        rel = page.relative_to(Path(board["html"]).parent).as_posix()
        assert f'href="{rel}"' in html
    assert "Compare these models" in html
    _check_offline_and_resolvable(Path(board["html"]))


def test_eval_keeps_predictions_beside_the_results_and_score_reads_them(small_world_study, tmp_path, capsys):
    from dsi_bench.cli import main
    from dsi_bench.results import Results

    shards = small_world_study.out / "shards"
    out = tmp_path / "r.json"
    assert main(["eval", "--classifier", "world:base", "--source", "shards", "--root", str(shards),
                 "--results", str(out), "--num-workers", "0", "--quiet"]) == 0
    kept = tmp_path / "r.predictions.csv.gz"
    assert kept.is_file() and f"predictions: {kept}" in capsys.readouterr().out
    r = Results.load(out)
    assert r["predictions"]["path"] == kept.name and r["predictions"]["confidence"] is True
    assert r["predictions"]["rows"] == sum(m["n"] for m in r.shifts.values())
    rescored = tmp_path / "s.json"
    assert main(["score", str(kept), "--source", "shards", "--root", str(shards), "--results", str(rescored)]) == 0
    assert Results.load(rescored).shifts == r.shifts
    assert main(["eval", "--classifier", "world:base", "--source", "shards", "--root", str(shards),
                 "--results", str(tmp_path / "n.json"), "--no-predictions", "--num-workers", "0", "--quiet"]) == 0
    assert not (tmp_path / "n.predictions.csv.gz").exists()
    assert "predictions" not in Results.load(tmp_path / "n.json").data


def test_report_of_generated_data_regenerates_what_the_cache_lost(tmp_path):
    from dsi_bench.evaluate import evaluate
    from dsi_bench.report import make_report
    from dsi_bench.world import study_pipeline

    # a PipelineSpec object: results record it field by field, the report builds it again
    data = {"source": "synth", "pipeline": study_pipeline(steps=4), "tokens": None, "per_class": 1,
            "classes": "1,404,779", "cache_dir": tmp_path / "cache"}
    r = evaluate("world:base", data, shifts="base,at_night", num_workers=0, progress=False)
    r.save(tmp_path / "r.json")
    shutil.rmtree(tmp_path / "cache")  # every image is a pure function of its settings: made again
    report = make_report(tmp_path / "r.json", tmp_path / "rep", progress=False)
    flips = r.shifts["at_night"]["flips"]
    assert not report.notes and flips > 0 and report.thumbnails == 2 * flips
    _check_offline_and_resolvable(report.index)
