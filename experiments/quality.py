#!/usr/bin/env python
"""The quality study of issue 17: the hand-written reference against rayclust's default.

    python experiments/quality_data.py /tmp/wt17/sets                 # build the collections
    python experiments/quality.py extract  /tmp/wt17/sets --cache-dir /tmp/wt17cache
    python experiments/quality.py reference /tmp/wt17/sets --cache-dir /tmp/wt17cache
    python experiments/quality.py default   /tmp/wt17/sets --cache-dir /tmp/wt17cache

``extract`` stores each collection's features of the views the default run uses
(efficientnet_lite0 and pixels) in the FeatureStore with the local engine, exactly as
``rayclust cluster`` computes them, so the CLI rows reuse them.

``reference`` is the 20-line script a user would write: one EfficientNet-Lite0 view
(rayclust's stored features of it: timm's own transform, fp32), L2-normalised,
``sklearn.cluster.KMeans(n_clusters=K, n_init=10, random_state=seed)``, seeds 0-4.

``default`` clusters the same stored features in-process through ``rayclust.clustering``
with the default RunConfig (what ``rayclust cluster DIR --labels-from-folders --clusters K``
does after extraction), seeds 0-4, and prints what the label-free selection chose.
``--set clustering.select=off`` gives the configured view's K-means alone (the default
before issue 17, with its restarts as now). Add ``--auto-k`` to run with ``clustering.n_clusters=auto`` instead of the class count.
``extract --views V ...`` stores other views (``efficientnet_lite0+gem``); ``reference
--reference-view V`` runs the script on one. Results go to ``--out`` as JSON (one file per command) and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

COLLECTIONS = ["sample", "tuxpaint", "digits", "openclipart", "icons", "openclipart_top", "oxygen"]
VIEWS = ["efficientnet_lite0", "pixels"]
SEEDS = 5


def scan(folder: Path):
    from rayclust.images import ImageSet

    return ImageSet.from_source(str(folder), labels_from_folders=True)


def extract(sets: Path, cache_dir: Path, names: list[str], views: list[str]) -> None:
    from rayclust.config import ExtractionConfig
    from rayclust.views import extract_views

    for name in names:
        image_set = scan(sets / name)
        start = time.perf_counter()
        results = extract_views(
            image_set.records, views, cache_dir, ExtractionConfig(engine="local"), progress=False
        )
        took = time.perf_counter() - start
        print(name, len(image_set.records), {v: r.n_extracted for v, r in results.items()},
              f"{took:.0f}s", flush=True)  # fmt: skip


def stored_key(cache_dir: Path, view: str) -> str:
    """The fp32 full-decode key the study's first extraction wrote; else the key ``extract``
    writes now (auto precision, reduced-scale decode), for views added later (``+gem``)."""
    from rayclust.config import ExtractionConfig
    from rayclust.views import extraction_specs, resolve_view

    key = resolve_view(view).key()
    if (cache_dir / key / "meta.json").is_file():
        return key
    return extraction_specs(view, ExtractionConfig(engine="local"))[0].key()


def stored(sets: Path, cache_dir: Path, name: str, views: list[str] = VIEWS):
    """(ids, labels, {view: raw features}) of one collection, from the FeatureStore."""
    from rayclust.clustering import read_features

    image_set = scan(sets / name)
    keys = {view: stored_key(cache_dir, view) for view in views}
    raw = read_features(cache_dir, image_set.image_ids, keys)
    return image_set.image_ids, image_set.labels, raw, keys


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def reference(sets: Path, cache_dir: Path, name: str, view: str = VIEWS[0]) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    _, labels, raw, _ = stored(sets, cache_dir, name, [view])
    x = raw[view].astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = len(set(labels))
    ari, nmi = [], []
    start = time.perf_counter()
    for seed in range(SEEDS):
        pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        ari.append(adjusted_rand_score(labels, pred))
        nmi.append(normalized_mutual_info_score(labels, pred))
    return {"k": k, "ari": summary(ari), "nmi": summary(nmi),
            "seconds": time.perf_counter() - start}  # fmt: skip


def default(sets: Path, cache_dir: Path, name: str, auto_k: bool, overrides: list[str]) -> dict:
    from rayclust.clustering import cluster_features, prepare_features
    from rayclust.config import RunConfig, deep_merge, nest_dotted, parse_overrides
    from rayclust.selection import run_views

    data = {"clustering": {"n_clusters": "auto"}} if auto_k else {}
    data = deep_merge(data, nest_dotted(parse_overrides(overrides)))
    config = RunConfig.from_dict(data)
    views = run_views(config)  # what `rayclust cluster` extracts: + pixels when selecting
    ids, labels, raw, keys = stored(sets, cache_dir, name, views)
    features = prepare_features(
        {v: raw[v] for v in views}, config.clustering, ids, {v: keys[v] for v in views}, labels
    )
    start = time.perf_counter()
    result = cluster_features(features, config)
    took = time.perf_counter() - start
    row = result.summary
    out = {
        "k_true": len(set(labels)),
        "primary": result.primary,
        "ari": row["ari"],
        "nmi": row["nmi"],
        "k_found": int(len(np.unique(result.labels))),
        "seconds": took,
    }
    selection = getattr(result, "selection", None)
    if selection is not None:
        out["selection"] = {
            key: selection[key] for key in ("chosen", "why", "refine") if selection.get(key)
        }
        if "refined" in result.rows:
            out["refined_ari"] = result.rows["refined"]["summary"]["ari"]
        if "k_selection" in selection:
            out["k_curve"] = selection["k_selection"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["extract", "reference", "default"])
    parser.add_argument("sets", type=Path)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=COLLECTIONS)
    parser.add_argument("--auto-k", action="store_true")
    parser.add_argument("--views", nargs="*", default=VIEWS, help="extract: the views to store")
    parser.add_argument("--reference-view", default=VIEWS[0], help="reference: its one view")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--set", nargs="*", default=[], dest="overrides", help="key=value config overrides"
    )
    args = parser.parse_args()
    if args.command == "extract":
        extract(args.sets, args.cache_dir, args.only, args.views)
        return
    results = {}
    for name in args.only:
        if args.command == "reference":
            results[name] = reference(args.sets, args.cache_dir, name, args.reference_view)
        else:
            results[name] = default(args.sets, args.cache_dir, name, args.auto_k, args.overrides)
        r = results[name]
        print(f"{name:12s} ARI {r['ari']['mean']:.3f} ({r['ari']['std']:.3f}) "
              f"NMI {r['nmi']['mean']:.3f} ({r['nmi']['std']:.3f}) "
              + " ".join(f"{k}={v}" for k, v in r.items() if k not in ("ari", "nmi", "k_curve")),
              flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
