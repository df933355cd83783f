"""Generate the package's ImageNet-1k class table, ``dsi_bench/data/imagenet_classes.json``.

Usage (from the repository root)::

    python scripts/make_class_table.py [../shared/data/imagenet_classes.json]

The input is the reference class table (rows with ``index``, ``wnid``, ``wordnet_label`` and
``common_name``: the release's names for class tokens and prompts). The output keeps those four
columns and adds ``torchvision_name``, torchvision's category name of the class (from the weight
metadata, no download), which dsi-bench accepts as an alias when resolving class specs
(``--classes cock`` is class 7, ``rooster``). The table is public facts, not code; it is written
one row per line so a diff shows which classes changed. The checks below refuse a table that
is not 1000 rows sorted by WordNet id.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "imagenet_classes.json"
OUTPUT = ROOT / "dsi_bench" / "data" / "imagenet_classes.json"
COLUMNS = ("index", "wnid", "wordnet_label", "common_name", "torchvision_name")


def make_table(source: Path) -> list[dict]:
    from torchvision.models import ResNet50_Weights

    rows = json.loads(source.read_text(encoding="utf-8"))
    torchvision_names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    if len(rows) != 1000 or len(torchvision_names) != 1000:
        raise SystemExit(f"{source}: expected 1000 rows, got {len(rows)}")
    if [r["index"] for r in rows] != list(range(1000)):
        raise SystemExit(f"{source}: rows must be sorted by index 0..999")
    wnids = [r["wnid"] for r in rows]
    if wnids != sorted(wnids) or len(set(wnids)) != 1000:
        raise SystemExit(f"{source}: WordNet ids must be unique and sorted (sorted ids are the class indices)")
    return [{**{k: r[k] for k in COLUMNS[:4]}, "torchvision_name": torchvision_names[r["index"]]} for r in rows]


def render(rows: list[dict]) -> str:
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else DEFAULT_INPUT
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render(make_table(source)), encoding="utf-8")
    print(f"wrote {OUTPUT} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
