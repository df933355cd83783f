"""The package's shape: layers that only point down, registries that drive everything, causes kept."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsi_bench"

#: The layers of the package, bottom first (the README's map states the same). A module may import
#: modules of its own layer or below, never above.
LAYERS = [
    ("foundation", {"version", "errors", "compat", "validate", "files", "memo", "dist", "layout", "images", "devices",
                    "online", "locks", "embedded"}),
    ("vocabulary", {"shifts", "classes", "phrases"}),
    ("models and statistics", {"tokens", "pipeline", "cache", "masks", "metrics"}),
    ("stores", {"synthesis", "shards", "release"}),
    ("sources", {"sources"}),
    ("dataset", {"datasets"}),
    ("producers", {"folders", "build", "convert", "hub", "clip_metric", "learn", "models", "results", "testing",
                   "world"}),
    ("harness", {"evaluate", "score", "leaderboard", "report", "probe"}),
    ("demo", {"demo"}),
    ("cli", {"cli"}),
]
LAYER_OF = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imports(path: Path, parts: tuple) -> list[str]:
    """Package modules imported anywhere in a file (functions too), except inside ``__getattr__``
    (the deprecation shims that forward moved names)."""
    tree = ast.parse(path.read_text())
    shims = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
             for n in ast.walk(f)}
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    out = []
    for node in ast.walk(tree):
        if id(node) in shims:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                out.append(".".join(base + [node.module]))
            else:
                out += [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dsi_bench."):
            out.append(node.module[len("dsi_bench."):])
        elif isinstance(node, ast.Import):
            out += [a.name[len("dsi_bench."):] for a in node.names if a.name.startswith("dsi_bench.")]
    return [m for m in out if m]


def test_every_module_is_in_a_layer():
    names = {parts[0] for _, parts in _modules() if parts[0] != "__init__"}
    assert names <= set(LAYER_OF), f"add {sorted(names - set(LAYER_OF))} to LAYERS (and to the README's map)"


def test_layers_only_point_down():
    edges, wrong = 0, []
    for path, parts in _modules():
        if parts[0] == "__init__":
            continue
        for target in _imports(path, parts):
            edges += 1
            top = target.split(".")[0]
            if LAYER_OF[top] > LAYER_OF[parts[0]]:
                wrong.append(f"{'.'.join(parts)} ({LAYERS[LAYER_OF[parts[0]]][0]}) imports {target} "
                             f"({LAYERS[LAYER_OF[top]][0]})")
    assert edges > 150  # the scan sees the imports (relative, absolute, inside functions)
    assert not wrong, "\n".join(wrong)


def test_errors_keep_their_cause():
    """No ``raise ... from None``: the CLI prints one line anyway, and Python callers keep the cause."""
    found = []
    for path, parts in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None:
                found.append(f"{'.'.join(parts)}:{node.lineno}")
    assert not found, found


def test_every_module_says_what_it_holds():
    missing = [".".join(parts) for path, parts in _modules()
               if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()]
    assert not missing, missing


def test_cli_choices_come_from_the_registries():
    from dsi_bench.build import ENGINES
    from dsi_bench.cli import build_parser
    from dsi_bench.metrics import rankable_metrics
    from dsi_bench.models import MODEL_KINDS
    from dsi_bench.pipeline import SAMPLERS
    from dsi_bench.sources import list_sources

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices

    def choices(command, dest):
        return list(next(a for a in sub[command]._actions if a.dest == dest).choices)

    assert choices("eval", "source") == list_sources()
    assert choices("build", "engine") == list(ENGINES)
    assert choices("generate", "sampler") == list(SAMPLERS)
    assert choices("leaderboard", "sort") == rankable_metrics()
    assert all(k.form in sub["eval"].format_help().replace("\n", " ").replace("  ", " ") for k in MODEL_KINDS.values())


def test_a_new_source_is_one_class_and_one_registration(tmp_path, monkeypatch, capsys):
    """An image-folder source (the layout `dsi-bench generate` writes) plugs into datasets, evaluate and the CLI."""
    from PIL import Image

    from dsi_bench import sources
    from dsi_bench.cli import build_parser
    from dsi_bench.datasets import ShiftedImageNet
    from dsi_bench.evaluate import evaluate
    from dsi_bench.layout import sample_key
    from dsi_bench.sources.base import Source
    from dsi_bench.testing import tiny_classifier

    class Entry:
        def __init__(self, key, label, path):
            self.key, self.label, self.keep, self.path = key, label, None, path

    class FolderSource(Source):
        name = "folder"
        root_help = "a folder of {shift}/{class:04d}/{index:02d}.png"
        description = "image folders as written by dsi-bench generate"

        @classmethod
        def available_shifts(cls, root):
            return sorted(p.name for p in Path(root).iterdir() if p.is_dir())

        def entries(self):
            files = sorted((Path(self.root) / self.shift.id).glob("*/*.png"))
            return [Entry(sample_key(self.shift.id, int(f.parent.name), int(f.stem)), int(f.parent.name), f)
                    for f in files]

        def load_image(self, entry, draft=None):
            return Image.open(entry.path).convert("RGB")

        def metadata(self, entry):
            return {"key": entry.key, "file": str(entry.path)}

        def fingerprint(self, entries):
            return "".join(f"{e.key}:{e.path.stat().st_size}\n" for e in entries)

    monkeypatch.setitem(sources._REGISTRY, "folder", FolderSource)
    for shift in ("base", "in_the_snow"):
        for c in (0, 1):
            for i in range(3):
                path = tmp_path / shift / f"{c:04d}" / f"{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (40 * c, 10 * i, 200 if shift != "base" else 0)).save(path)
    ds = ShiftedImageNet("in the snow", source="folder", root=tmp_path, per_class=2)
    assert ds.keys == ["in_the_snow/0000/00", "in_the_snow/0000/01", "in_the_snow/0001/00", "in_the_snow/0001/01"]
    module, transform = tiny_classifier()
    r = evaluate(module, {"source": "folder", "root": tmp_path}, transform=transform, progress=False, num_workers=0)
    assert r.shifts["in_the_snow"]["pairs"] == 6 and r["summary"]["shifts"] == ["base", "in_the_snow"]
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "folder" in next(a for a in sub["eval"]._actions if a.dest == "source").choices
    from dsi_bench.errors import SpecError

    with pytest.raises(SpecError, match="already registered"):
        sources.register_source("folder", object)


def test_caches_are_bounded_and_cleared_together(tiny_tokens):
    from dsi_bench import classes, clip_metric, memo, pipeline, shards, tokens  # noqa: F401 - their caches

    names = {m.name for m in memo._ALL}
    assert {"model fingerprints", "pipeline bases", "pipelines", "shard indexes", "token banks", "CLIP models"} <= names
    assert all(m.maxsize > 0 for m in memo._ALL)
    bank = tokens.load_tokens(tiny_tokens)
    assert tokens.load_tokens(tiny_tokens) is bank  # read once per process
    classes.imagenet_classes()
    memo.clear_caches()
    assert len(tokens._LOADED) == 0 and classes._imagenet_cached.cache_info().currsize == 0
    assert tokens.load_tokens(tiny_tokens) is not bank
    small = memo.Memo("test", 2)
    for i in range(3):
        small.put(i, i)
    assert 0 not in small and len(small) == 2  # least recently used first out
