"""NMI against the number of views over every subset of the views (paper 001, Figure 10).

For each collection: one ``rayclust run`` of experiments/mvec_paper.yaml with all views
(extracts and caches the features, records the time model in metrics.json), then MVEC in
paper mode (scikit-learn's default agglomerative per view, equal weights, co-association
cut by average linkage) on every non-empty subset of the views: m = 1 scores the view's own
agglomerative partition, m >= 2 the consensus. Prints and writes, per m, the mean and SD of
the NMI over the C(M, m) subsets, as the paper's Figure 10 does.

    python experiments/nmi_vs_views.py data/sample /tmp/wt20data/tux5 --out experiments/nmi_vs_views
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from rayclust import pipeline
from rayclust.clustering import (
    ClusterJob,
    Features,
    cluster_features,
    cluster_seeds,
    combine_views,
    load_features,
    score_partitions,
)
from rayclust.config import load_config
from rayclust.ray_session import ensure_ray

CONFIG = Path(__file__).with_name("mvec_paper.yaml")


def subsets_nmi(features: Features, config, n_clusters: int) -> list[dict]:
    views = list(features.per_view)
    out = []
    for m in range(1, len(views) + 1):
        for subset in itertools.combinations(views, m):
            per_view = {v: features.per_view[v] for v in subset}
            sub = Features(
                ids=features.ids,
                per_view=per_view,
                combined=combine_views(per_view),
                view_keys={v: features.view_keys[v] for v in subset},
                labels_true=features.labels_true,
                label_names=features.label_names,
            )
            start = time.perf_counter()
            if m == 1:  # the paper's agglomerative on the view alone
                fit = cluster_seeds(per_view[subset[0]], ClusterJob.from_config(config, n_clusters))
                row = score_partitions(fit["partitions"], fit["internal"], features.labels_true)
                timings = {"view_fit_s": {subset[0]: fit["seconds"]}, "consensus_s": {}}
            else:
                result = cluster_features(sub, config, n_clusters, parallel=False)
                row = result.rows["consensus:coassociation"]
                timings = result.timings
            seconds = time.perf_counter() - start
            out.append(
                {
                    "views": list(subset),
                    "m": m,
                    "nmi": row["summary"]["nmi"]["mean"],
                    "acc": row["summary"]["acc"]["mean"],
                    "t2_s": timings["view_fit_s"],
                    "t3_s": sum(timings["consensus_s"].values()),
                    "seconds": seconds,
                }
            )
    return out


def per_m(results: list[dict]) -> dict[int, dict[str, float]]:
    table = {}
    for m in sorted({r["m"] for r in results}):
        nmis = [r["nmi"] for r in results if r["m"] == m]
        table[m] = {"mean": float(np.mean(nmis)), "std": float(np.std(nmis)), "n": len(nmis)}
    return table


def run_collection(source: str, out: Path, cache: str | None) -> dict:
    name = Path(source).name
    overrides = [f"input.source={source}", f"output={out / ('run-' + name)}", f"name={name}"]
    if cache:
        overrides.append(f"extraction.cache_dir={cache}")
    config = load_config(CONFIG, overrides)
    start = time.perf_counter()
    run = pipeline.run(config, progress=False)
    wall = time.perf_counter() - start
    image_set = pipeline.scan(config)
    ensure_ray(config.ray.address, config.ray.num_cpus)
    config = pipeline.resolve_run_paths(config)
    extraction = pipeline.extract(config, image_set, progress=False)
    features = load_features(
        config, extraction.images.image_ids, extraction.view_keys, extraction.images.labels
    )
    n_clusters = len(features.label_names)
    results = subsets_nmi(features, config, n_clusters)
    return {
        "collection": source,
        "n_images": run.n_images,
        "n_clusters": n_clusters,
        "run_wall_s": wall,
        "mvec_time": run.metrics.get("mvec_time"),
        "mvec_scores": run.metrics.get("mvec_scores"),
        "timings": run.metrics.get("timings"),
        "subsets": results,
        "per_m": per_m(results),
    }


def plot(collections: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c in collections:
        ms = sorted(c["per_m"])
        mean = [c["per_m"][m]["mean"] for m in ms]
        std = [c["per_m"][m]["std"] for m in ms]
        ax.errorbar(ms, mean, yerr=std, marker="o", capsize=3, label=Path(c["collection"]).name)
    ax.set_xlabel("number of views m")
    ax.set_ylabel("NMI (mean, SD over subsets)")
    ax.set_xticks(sorted(collections[0]["per_m"]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collections", nargs="+")
    parser.add_argument("--out", default="runs/nmi_vs_views")
    parser.add_argument("--cache", default=None, help="FeatureStore folder (default: rayclust's)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    collections = [run_collection(c, out, args.cache) for c in args.collections]
    for c in collections:
        c["per_m"] = {int(k): v for k, v in c["per_m"].items()}
        print(f"\n{c['collection']} ({c['n_images']} images, {c['n_clusters']} classes)")
        print("| m | subsets | NMI mean (SD) |\n|---|---|---|")
        for m, s in c["per_m"].items():
            print(f"| {m} | {s['n']} | {s['mean']:.3f} ({s['std']:.3f}) |")
        for r in c["subsets"]:
            print(f"  {'+'.join(r['views'])}: NMI {r['nmi']:.3f}")
        print("time model:", json.dumps(c["mvec_time"], indent=None))
    (out / "results.json").write_text(json.dumps(collections, indent=1, default=float))
    plot(collections, out / "nmi_vs_views.png")
    print(f"\nwritten: {out / 'results.json'}, {out / 'nmi_vs_views.png'}")


if __name__ == "__main__":
    main()
