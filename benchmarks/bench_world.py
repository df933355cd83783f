"""Does the method work on the embedded world? The quality table of the README, measured.

Runs the world study on every catalog shift (base + 23, ``--per-class`` pairs per class), then measures:

1. each world classifier's top-1 on held-out renders, per context (the base classifier's target: >= 95 %);
2. generations under base from the learned tokens vs from the class words, judged by world:base
   (target: >= 80 % and within 10 points of the words); and under backgrounds and colours, judged by
   world:augmented (robust to those on renders): whether the learned tokens compose with shift phrases;
3. that shifts are visible in the generations: brightness and contrast (night/dusk darker, snow/fog
   brighter with lower contrast), the share of the colour's hue (colour shifts), and how often the
   world CLIP ranks the shifted caption above the base caption (target: >= 80 %);
4. the study: per shift and classifier, top-1, the paired drop and McNemar p (target: >= 3 shifts at
   p < 0.01 for world:base; the classifiers differ);
5. the CLIP filter: top-1 of kept vs dropped samples.

Writes ``benchmarks/results/world_cpu.json``. About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import hardware, write_result  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=10, help="study pairs per class and shift (default: 10)")
    p.add_argument("--word-per-class", type=int, default=20, help="base generations per class for tokens vs words")
    p.add_argument("--work", default=None, help="study folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/world_cpu.json)")
    args = p.parse_args(argv)

    import torch

    from dsi_bench.demo import WORLD_CLASSIFIERS, run_world_study, world_study_pipeline
    from dsi_bench.evaluate import evaluate
    from dsi_bench.shifts import get_shift
    from dsi_bench.world import CONTEXTS, manifest
    from dsi_bench.world.quality import (
        brightness_contrast,
        clip_prefers_shift,
        generate,
        hue_share,
        predict,
        render_accuracy,
    )

    t_start = time.time()
    result = {"hardware": hardware(), "world": {k: manifest()[k] for k in ("format", "config", "versions")},
              "pipeline": world_study_pipeline().pixel_settings(), "per_class": args.per_class}

    # 1. classifiers on renders
    t = time.time()
    result["renders_top1"] = {spec: {ctx: render_accuracy(spec, ctx, per_class=50 if ctx == "base" else 20)
                                     for ctx in CONTEXTS} for spec in WORLD_CLASSIFIERS}
    result["seconds_renders"] = round(time.time() - t, 1)
    print("renders top-1 (base):", {s: v["base"] for s, v in result["renders_top1"].items()})

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        # 2. learned tokens vs class words under base
        t = time.time()
        gen = {}
        for what, tokens in (("learned_tokens", "world"), ("class_words", None)):
            images, labels = generate("base", per_class=args.word_per_class, tokens=tokens,
                                      cache_dir=work / "cache-words")
            gen[what] = float((predict(images, "world:base") == labels).mean())
        gen["n"] = args.word_per_class * 10
        gen["seconds"] = round(time.time() - t, 1)
        result["generation_base_top1"] = gen
        print("generation under base:", gen)
        # learned tokens under shifts, judged by the classifier that is robust to them on renders
        t = time.time()
        compose = {}
        for shift in ("in_the_grass", "in_the_forest", "blue", "green"):
            row = {}
            for what, tokens in (("learned_tokens", "world"), ("class_words", None)):
                images, labels = generate(shift, per_class=args.word_per_class // 2, tokens=tokens,
                                          cache_dir=work / "cache-words")
                row[what] = float((predict(images, "world:augmented") == labels).mean())
            compose[shift] = row
        result["composition_world_augmented_top1"] = {"per_shift": compose, "seconds": round(time.time() - t, 1),
                                                      "n_per_shift": args.word_per_class // 2 * 10}
        print("composition (world:augmented):", compose)

        # 4. the study on every shift (also the images for 3 and 5)
        t = time.time()
        study = run_world_study(work / "study", shifts=list(CONTEXTS), per_class=args.per_class, progress=False)
        result["seconds_study"] = round(time.time() - t, 1)
        result["study_build_seconds"] = round(study.build.seconds, 1)
        result["images_generated"] = study.build.samples_built
        shards = work / "study" / "shards"
        unmasked = {spec: evaluate(spec, {"source": "shards", "root": shards}, num_workers=0, progress=False)
                    for spec in WORLD_CLASSIFIERS}
        fields = ("top1", "drop_vs_base", "flip_rate", "reverse_flip_rate", "mcnemar_p", "pairs")
        result["study_unfiltered"] = {spec: {s: {f: r.shifts[s].get(f) for f in fields} for s in r.shifts}
                                      for spec, r in unmasked.items()}
        result["study_filtered"] = {spec: {s: {f: r.shifts[s].get(f) for f in fields} for s in r.shifts}
                                    for spec, r in study.results.items()}
        base_study = result["study_unfiltered"]["world:base"]
        result["significant_drops_world_base"] = sorted(
            s for s, v in base_study.items() if s != "base" and v["mcnemar_p"] is not None and v["mcnemar_p"] < 0.01
            and (v["drop_vs_base"] or 0) > 0)
        result["mean_top1_unfiltered"] = {spec: r["summary"]["mean_top1"] for spec, r in unmasked.items()}

        # 3. shifts are visible, and 5. the filter, from the study's images
        from dsi_bench.datasets import ShiftedDataset

        scores = np.load(shards / "clip_scores.npz")
        keep = dict(zip(scores["keys"].tolist(), scores["keep"].tolist()))
        visible, kept_ok, dropped_ok = {}, [], []
        base_bc = None
        for ctx in CONTEXTS:
            ds = ShiftedDataset(ctx, source="shards", root=shards)
            samples = ds.__getitems__(range(len(ds)))
            images = [s[0] for s in samples]
            labels = np.array([s[1] for s in samples])
            right = predict(images, "world:base") == labels
            for k, ok in zip(ds.keys, right):
                (kept_ok if keep[k] else dropped_ok).append(bool(ok))
            b, c = brightness_contrast(images)
            row = {"brightness": round(b, 4), "contrast": round(c, 4)}
            if ctx == "base":
                base_bc = (b, c)
                base_images = images
            else:
                row["clip_prefers_shifted_caption"] = round(float(clip_prefers_shift(images, labels, ctx).mean()), 4)
            if get_shift(ctx).group == "colour":
                row["hue_share"] = round(hue_share(images, ctx), 4)
                row["hue_share_base"] = round(hue_share(base_images, ctx), 4)
            visible[ctx] = row
        checks = {
            "night_darker": visible["at_night"]["brightness"] < base_bc[0],
            "dusk_darker": visible["at_dusk"]["brightness"] < base_bc[0],
            "snow_brighter": visible["in_the_snow"]["brightness"] > base_bc[0],
            "fog_brighter": visible["in_the_fog"]["brightness"] > base_bc[0],
            "snow_lower_contrast": visible["in_the_snow"]["contrast"] < base_bc[1],
            "fog_lower_contrast": visible["in_the_fog"]["contrast"] < base_bc[1],
            "colours_move_hue": {c: visible[c]["hue_share"] > visible[c]["hue_share_base"]
                                 for c in ("blue", "green", "red", "yellow", "orange")},
            "clip_prefers_shifted_caption_mean": round(float(np.mean(
                [v["clip_prefers_shifted_caption"] for k, v in visible.items() if k != "base"])), 4),
        }
        result["shift_visibility"] = {"per_shift": visible, "checks": checks}
        result["clip_filter"] = {
            "kept": len(kept_ok), "dropped": len(dropped_ok),
            "top1_kept": round(float(np.mean(kept_ok)), 4) if kept_ok else None,
            "top1_dropped": round(float(np.mean(dropped_ok)), 4) if dropped_ok else None,
            "thresholds": study.clip.get("thresholds"),
        }
        print("clip filter:", result["clip_filter"])
    result["torch_threads"] = torch.get_num_threads()
    result["seconds_total"] = round(time.time() - t_start, 1)
    write_result(result, args.out, "world_cpu.json")
    return result


if __name__ == "__main__":
    main()
