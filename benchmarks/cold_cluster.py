"""Cold `rayclust cluster` end to end against a hand-written fp32 timm loop + scikit-learn.

    python benchmarks/cold_cluster.py --list /tmp/images.txt --clusters 16

Both run as fresh processes on the same image list (a ``.txt``, one path per line), in the
same run, one after the other (``--repeat`` alternates them again):

1. reference: a 25-line script as a user would write it: timm ``tf_efficientnet_lite0`` with
   the same offline weights, timm's eval transform on every image (Pillow, converted to RGB),
   fp32 eager forward, batch 32, then scikit-learn ``KMeans(n_clusters, n_init=5)``;
2. rayclust: ``python -m rayclust cluster LIST --clusters K`` with the default view, a fresh
   feature cache and run folder (defaults otherwise: MLflow record, report, 5 seeds).

Printed: seconds of each and the ratio reference / rayclust (the goal: >= 3). The machine
may be shared: compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

REFERENCE = r"""
import sys, numpy as np, torch, timm
from PIL import Image
from sklearn.cluster import KMeans
from timm.data import create_transform, resolve_model_data_config
from rayclust.views.weights import get_weight_source  # the same offline weights, loaded once
from rayclust.views import get_view_spec
paths = [line.strip() for line in open(sys.argv[1]) if line.strip()]
model = get_weight_source("effnet-lite-package").create_model(get_view_spec("efficientnet_lite0"))
model.eval()
transform = create_transform(**resolve_model_data_config(model), is_training=False)
features = []
with torch.inference_mode():
    for start in range(0, len(paths), 32):
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + 32]])
        features.append(model(batch).numpy())
x = np.concatenate(features)
x /= np.linalg.norm(x, axis=1, keepdims=True)
labels = KMeans(n_clusters=int(sys.argv[2]), n_init=5, random_state=0).fit_predict(x)
print(len(paths), "images", len(set(labels)), "clusters")
"""


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", required=True, help="a .txt file, one image path per line")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    n = sum(1 for line in open(args.list) if line.strip())
    print(f"{n} images from {args.list}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for round_ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "reference.py"
            script.write_text(REFERENCE)
            reference = _timed([sys.executable, str(script), args.list, str(args.clusters)], env)
            rayclust = _timed(
                [
                    sys.executable, "-m", "rayclust", "cluster", args.list,
                    "--clusters", str(args.clusters), "--output", f"{tmp}/run",
                    "--cache-dir", f"{tmp}/cache", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
                ],
                env,
            )  # fmt: skip
            metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
            stages = ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items())
        print(f"rayclust stages (s): {stages}")
        print(
            f"round {round_}: reference fp32 timm + sklearn {reference:.1f} s, "
            f"rayclust cluster {rayclust:.1f} s, ratio {reference / rayclust:.2f}x "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
