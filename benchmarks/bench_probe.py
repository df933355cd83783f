"""Does the adaptive probe find what exhaustive evaluation finds, with fewer images? Measured on the world.

1. **Pool.** The 23 catalog shifts plus 37 phrases drawn (seed 15) from the rest of the built-in vocabulary,
   on every world class, 20 twins per class: 60 x 200 shifted images + 200 base twins = 12,200 images,
   generated once by the world's generator with its learned tokens (the study's settings) and classified
   by the three world classifiers. The predictions are kept in ``results/probe_pool_world.json.gz``
   (rerunning reuses them; ``--rebuild`` generates again, about 17 minutes on 2 idle cores).
2. **Exhaustive truth** per classifier: every phrase's paired drop over all 200 pairs; its top 3; the
   phrases it finds harmful (one-sided exact McNemar on all 200 pairs, Holm over the 60 at alpha); how
   stable its own top 3 is (share of 1,000 bootstrap resamples of the 200 units with the same top-3 set).
3. **Probe runs**, 10 order seeds per classifier, drawing from the pool (no new generation), with a budget of
   30 % of the exhaustive images: images used, why they stopped, whether the top 3 equal exhaustive's (as a
   set), whether they are within 5 points of exhaustive's 3rd worst (epsilon-top-3), and the false
   discovery proportion (phrases the probe calls significant that exhaustive does not find harmful).
   Also the recall: the share of the phrases exhaustive finds harmful that the probe calls significant.
4. **Synthetic arms with a top 3 that exists** (no generation): 60 phrases on the pool's 200 units with known
   paired drops, the budget the whole pool: how many images the probe uses before it certifies its top 3 or
   runs out of units, whether its top 3 are the true ones, and its false discoveries. Two gaps: drops 0.9,
   0.8, 0.7 and 57 drawn from [0, 0.3] ("wide"), and 0.9, 0.75, 0.6 with 57 from [0, 0.4] ("narrow").

Writes ``benchmarks/results/probe_cpu.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, hardware, write_result  # noqa: E402

CLASSIFIERS = ("base", "augmented", "resnet")
PER_CLASS = 20
POOL_FILE = RESULTS / "probe_pool_world.json.gz"
EPSILON = 0.05


def pool_phrases() -> list:
    from dsi_bench.phrases import list_phrases

    catalog = list_phrases(group="catalog")
    rest = [p for p in list_phrases() if p.group != "catalog"]
    return catalog + random.Random(15).sample(rest, 37)


def build_pool(phrases, cache_dir: str | None) -> dict:
    """Generate and classify the pool: ``{"phrases": [...], "per_class": n, "rows": {shift_id: {keys, labels,
    world:NAME: top-1}}}``."""
    from dsi_bench.layout import sample_key
    from dsi_bench.world import WORLD_CLASSES
    from dsi_bench.world.quality import generate, predict

    classes = [c.index for c in WORLD_CLASSES]
    rows, t0 = {}, time.time()
    for text in ["base"] + [p.text for p in phrases]:
        from dsi_bench.shifts import get_shift

        sid = get_shift(text).id
        images, labels = generate(text, per_class=PER_CLASS, cache_dir=cache_dir)
        keys = [sample_key(sid, c, i) for c in classes for i in range(PER_CLASS)]  # generate() is class-major
        rows[sid] = {"keys": keys, "labels": labels.tolist(),
                     **{f"world:{c}": predict(images, f"world:{c}").tolist() for c in CLASSIFIERS}}
        print(f"pool: {text!r} {time.time() - t0:.0f}s", flush=True)
    return {"phrases": [[p.text, p.group, p.id] for p in phrases], "per_class": PER_CLASS, "rows": rows}


def predictions(pool: dict, classifier: str) -> dict:
    from dsi_bench.metrics import ShiftPredictions

    return {sid: ShiftPredictions(r["keys"], np.array(r["labels"]), np.array(r[classifier])[:, None])
            for sid, r in pool["rows"].items()}


def exhaustive_truth(pool: dict, classifier: str, alpha: float, rng) -> dict:
    from dsi_bench.probe import adjust_p

    rows = pool["rows"]
    base_right = np.array(rows["base"][classifier]) == np.array(rows["base"]["labels"])
    ids = [p[2] for p in pool["phrases"]]
    d = np.stack([base_right.astype(float) - (np.array(rows[s][classifier]) == np.array(rows[s]["labels"]))
                  for s in ids])  # (phrases, units), aligned: same class-major unit order
    drops = d.mean(1)
    order = sorted(range(len(ids)), key=lambda a: (-drops[a], a))
    top3 = [ids[a] for a in order[:3]]
    # one-sided exact McNemar (b flips against c reverse flips), Holm over the phrases
    p = []
    for row in d:  # P(X >= b), X ~ Binomial(b + c, 1/2)
        b, c = int((row > 0).sum()), int((row < 0).sum())
        p.append(sum(math.comb(b + c, i) for i in range(b, b + c + 1)) / 2 ** (b + c))
    harmful = adjust_p(p, "holm") <= alpha
    boots = 0
    for _ in range(1000):
        pick = rng.integers(0, d.shape[1], d.shape[1])
        m = d[:, pick].mean(1)
        boots += {ids[a] for a in sorted(range(len(ids)), key=lambda a: (-m[a], a))[:3]} == set(top3)
    return {"drops": dict(zip(ids, drops.round(4).tolist())), "top3": top3,
            "third_drop": float(drops[order[2]]), "fourth_drop": float(drops[order[3]]),
            "within_epsilon_of_third": int((drops >= drops[order[2]] - EPSILON).sum()),
            "harmful": [s for s, h in zip(ids, harmful) if h], "bootstrap_top3_stability": boots / 1000}


def probe_runs(pool: dict, classifier: str, truth: dict, *, budget: int, tolerance: float, seeds: int,
               alpha: float) -> dict:
    from dsi_bench.probe import TableOracle, probe

    texts = [p[0] for p in pool["phrases"]]
    preds = predictions(pool, classifier)
    runs = []
    for seed in range(seeds):
        t0 = time.time()
        r = probe(classifier, texts, {"generator": "world", "tokens": "world"}, budget=budget, alpha=alpha,
                  tolerance=tolerance, order_seed=seed, oracle=TableOracle(preds, capacity=PER_CLASS),
                  progress=False)
        top = [row["shift"] for row in r.table[:3]]
        significant = [row["shift"] for row in r.table if row["significant"]]
        false = [s for s in significant if s not in truth["harmful"]]
        runs.append({"seed": seed, "images": r.images, "stopped": r.stopped, "rounds": r.rounds, "top3": top,
                     "same_top3": set(top) == set(truth["top3"]),
                     "epsilon_top3": all(truth["drops"][s] >= truth["third_drop"] - EPSILON for s in top),
                     "significant": len(significant), "false_discoveries": len(false),
                     "recall": len(set(significant) & set(truth["harmful"])) / max(1, len(truth["harmful"])),
                     "fdp": len(false) / max(1, len(significant)), "seconds": round(time.time() - t0, 2)})
    return {"runs": runs,
            "same_top3": sum(r["same_top3"] for r in runs), "epsilon_top3": sum(r["epsilon_top3"] for r in runs),
            "mean_images": float(np.mean([r["images"] for r in runs])),
            "max_fdp": max(r["fdp"] for r in runs), "mean_fdp": float(np.mean([r["fdp"] for r in runs])),
            "mean_significant": float(np.mean([r["significant"] for r in runs])),
            "mean_recall": float(np.mean([r["recall"] for r in runs]))}


def synthetic(pool: dict, seeds: int, alpha: float, exhaustive: int, top: tuple, high: float) -> dict:
    """Known effects on the pool's units: the twins as world:base scored them, shifted samples wrong with the
    probability that gives each phrase its drop: ``top`` for three, uniform in [0, ``high``] for the rest."""
    rng = np.random.default_rng(15)
    ids = [p[2] for p in pool["phrases"]]
    drops = dict(zip(ids, list(top) + rng.uniform(0, high, len(ids) - 3).round(3).tolist()))
    base = pool["rows"]["base"]
    labels = np.array(base["labels"])
    twin = np.array(base["world:base"]) == labels
    wrong = np.where(labels == 1, 404, 1)
    rows = {"base": {"keys": base["keys"], "labels": base["labels"], "world:base": base["world:base"]}}
    for sid in ids:
        right = twin & (rng.random(labels.size) < 1 - drops[sid] / max(twin.mean(), 1e-9))
        keys = [k.replace("base/", f"{sid}/", 1) for k in base["keys"]]
        rows[sid] = {"keys": keys, "labels": base["labels"], "world:base": np.where(right, labels, wrong).tolist()}
    fake = {"phrases": pool["phrases"], "rows": rows}
    truth = exhaustive_truth(fake, "world:base", alpha, np.random.default_rng(0))
    runs = probe_runs(fake, "world:base", truth, budget=exhaustive, tolerance=0.0, seeds=seeds, alpha=alpha)
    runs["stopped"] = sorted({r["stopped"] for r in runs["runs"]})
    runs["at_30_percent"] = probe_runs(fake, "world:base", truth, budget=int(0.3 * exhaustive), tolerance=0.0,
                                       seeds=seeds, alpha=alpha)
    runs["drops"] = drops
    runs["exhaustive"] = truth
    return runs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rebuild", action="store_true", help="generate the pool again (default: reuse the kept one)")
    p.add_argument("--cache-dir", default=None, help="sample cache for the pool's images (default: the user's)")
    p.add_argument("--seeds", type=int, default=10, help="probe runs per classifier (default: 10)")
    p.add_argument("--budget-share", type=float, default=0.3, help="budget as a share of exhaustive (default 0.3)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/probe_cpu.json)")
    args = p.parse_args(argv)

    phrases = pool_phrases()
    if args.rebuild or not POOL_FILE.exists():
        pool = build_pool(phrases, args.cache_dir)
        POOL_FILE.write_bytes(gzip.compress(json.dumps(pool).encode(), mtime=0))
    else:
        pool = json.loads(gzip.decompress(POOL_FILE.read_bytes()))
        if [p[2] for p in pool["phrases"]] != [p.id for p in phrases]:
            sys.exit(f"{POOL_FILE} holds other phrases than this script draws; rerun with --rebuild")
    m = len(pool["phrases"])
    exhaustive = m * 10 * PER_CLASS + 10 * PER_CLASS
    budget = int(args.budget_share * exhaustive)
    result = {"hardware": hardware(), "phrases": m, "units": 10 * PER_CLASS, "exhaustive_images": exhaustive,
              "budget": budget, "alpha": args.alpha, "epsilon": EPSILON, "seeds": args.seeds,
              "classifiers": {}}
    # generation throughput of the pool's settings, measured now (not cached): 200 images of one class set
    from dsi_bench.world.quality import generate

    generate("base", per_class=1, cache_dir=False)  # load the pipeline first
    t0 = time.time()
    generate("base", per_class=PER_CLASS, cache_dir=False, seed=1)
    result["generation_images_per_second"] = 10 * PER_CLASS / (time.time() - t0)
    rng = np.random.default_rng(0)
    for name in CLASSIFIERS:
        classifier = f"world:{name}"
        truth = exhaustive_truth(pool, classifier, args.alpha, rng)
        runs = probe_runs(pool, classifier, truth, budget=budget, tolerance=0.0, seeds=args.seeds,
                          alpha=args.alpha)
        result["classifiers"][classifier] = {"exhaustive": truth, "probe": runs}
        top = ", ".join(f"{s} {100 * truth['drops'][s]:.1f}" for s in truth["top3"])
        print(f"{classifier}: exhaustive top-3 {top}; 4th {100 * truth['fourth_drop']:.1f}; "
              f"{truth['within_epsilon_of_third']} phrases within 5 pts of the 3rd; bootstrap stability "
              f"{truth['bootstrap_top3_stability']:.2f}; harmful {len(truth['harmful'])}/{m}")
        print(f"  probe at {100 * args.budget_share:.0f}%: same top-3 {runs['same_top3']}/{args.seeds}, epsilon-top-3 "
              f"{runs['epsilon_top3']}/{args.seeds}, images {runs['mean_images']:.0f} "
              f"({100 * runs['mean_images'] / exhaustive:.0f}%), max FDP {runs['max_fdp']:.2f}, "
              f"significant {runs['mean_significant']:.1f}, recall {runs['mean_recall']:.2f}")
    result["synthetic"] = {}
    for gap, (top, high) in {"wide": ((0.9, 0.8, 0.7), 0.3), "narrow": ((0.9, 0.75, 0.6), 0.4)}.items():
        syn = result["synthetic"][gap] = synthetic(pool, args.seeds, args.alpha, exhaustive, top, high)
        print(f"synthetic, {gap} gap: same top-3 {syn['same_top3']}/{args.seeds}, images {syn['mean_images']:.0f} "
              f"({100 * syn['mean_images'] / exhaustive:.0f}%), stopped {syn['stopped']}, max FDP "
              f"{syn['max_fdp']:.2f}, recall {syn['mean_recall']:.2f}; at 30%: same top-3 "
              f"{syn['at_30_percent']['same_top3']}/{args.seeds}, max FDP {syn['at_30_percent']['max_fdp']:.2f}")
    write_result(result, args.out, "probe_cpu.json")
    return result


if __name__ == "__main__":
    main()
