#!/usr/bin/env python
"""Which label-free score picks the right candidate? (issue 17; experiments/README.md)

    python experiments/quality_candidates.py /tmp/q/sets --cache-dir /tmp/q/cache sample tuxpaint

For every collection: the 9 candidates (lite0 / pixels / concat x K-means / spectral / ward),
seeds 0-2, each scored by its mean ARI (needs labels) and by label-free scores of its seed-0
partition in every representation's space (L2, PCA 50): cosine silhouette (``sil_``), the
share of 10 nearest neighbours in the same cluster (``knn_``) and the modularity of the
symmetric 10-NN graph (``mod_``, mean over seeds); plus seed stability (mean pairwise ARI).
Writes ``<out>/cand_<name>.json`` and prints which candidate each score would pick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

from rayclust.cluster import create_estimator, graph_modularity  # noqa: E402
from rayclust.clustering import combine_views, l2_normalize  # noqa: E402

ALGORITHMS = ["kmeans", "spectral", "agglomerative"]
SEEDS = 3


def study(sets: Path, cache: Path, name: str) -> list[dict]:
    _, labels, raw, _ = quality.stored(sets, cache, name)
    y = np.unique(labels, return_inverse=True)[1]
    k = len(set(labels))
    reps = {v: l2_normalize(raw[v].astype(np.float32)) for v in quality.VIEWS}
    reps["concat"] = combine_views(reps)
    red = {r: PCA(50, random_state=0).fit_transform(x) for r, x in reps.items()}
    knn, graphs = {}, {}
    for r, x in red.items():
        xn = l2_normalize(x)
        knn[r] = NearestNeighbors(n_neighbors=11).fit(xn).kneighbors(xn)[1][:, 1:]
        n = len(xn)
        a = sp.csr_matrix((np.ones(n * 10), (np.repeat(np.arange(n), 10), knn[r].ravel())), (n, n))
        graphs[r] = ((a + a.T) > 0).astype(float)
    rows = []
    for r, x in reps.items():
        for algo in ALGORITHMS:
            data = x if algo == "kmeans" else red[r]
            parts = [
                create_estimator(algo, k, random_state=s).fit_predict(data) for s in range(SEEDS)
            ]
            row = {
                "rep": r,
                "algo": algo,
                "ari": float(np.mean([adjusted_rand_score(y, p) for p in parts])),
            }
            for space, xs in red.items():
                row[f"sil_{space}"] = float(silhouette_score(xs, parts[0], metric="cosine"))
                row[f"knn_{space}"] = float(np.mean(parts[0][knn[space]] == parts[0][:, None]))
                row[f"mod_{space}"] = float(
                    np.mean([graph_modularity(graphs[space], p) for p in parts])
                )
            pairs = [(i, j) for i in range(SEEDS) for j in range(i + 1, SEEDS)]
            row["stab"] = float(
                np.mean([adjusted_rand_score(parts[i], parts[j]) for i, j in pairs])
            )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", type=Path)
    parser.add_argument("names", nargs="+")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    for name in args.names:
        rows = study(args.sets, args.cache_dir, name)
        (args.out / f"cand_{name}.json").write_text(json.dumps(rows, indent=1))
        picks = []
        for score in ("mod", "sil", "knn", "ari"):
            key = (
                (lambda r: r["ari"])
                if score == "ari"
                else (lambda r, s=score: r[f"{s}_{r['rep']}"])
            )
            best = max(rows, key=key)
            picks.append(f"{score}: {best['rep']}/{best['algo']} ARI {best['ari']:.3f}")
        print(name, " | ".join(picks), flush=True)


if __name__ == "__main__":
    main()
