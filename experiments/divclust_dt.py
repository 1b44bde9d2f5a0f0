"""Does D^T act? DivClust on digits' pixels at several diversity targets, one process, no Ray.

Two settings: the published update rule (T = 20 steps, m = 0.01) on a schedule long enough
for d to move (batch 64: ~12 steps per epoch), and the fast control of
tests/deep/test_training.py (T = 4, m = 0.05). Per run: the mean inter-head NMI reached
(D^R), the final threshold d, the mean diversity loss of the last epoch, ACC/NMI of the
selected heads' consensus on the held-out rows.

    python experiments/divclust_dt.py --targets 1.0 0.6 0.4 --epochs 40
"""

from __future__ import annotations

import argparse
import time

from rayclust.deep import fit_deep, load_deep_config

BASE = [
    "method=divclust",
    "data.source=digits",
    "data.max_images=1000",
    "data.holdout_fraction=0.2",
    "features.view=pixels",
    "features.image_size=8",
    "features.grayscale=true",
    "features.augmentations=[crop]",
    "features.rotations=true",
    "features.standardize=false",
    "trainer.backend=local",
    "trainer.batch_size=64",
    "trainer.hidden_dim=128",
    "tracking.enabled=false",
    "divclust.consensus_heads=4",
    "divclust.memory_bank=2000",
]
SETTINGS = {
    "published (T=20, m=0.01)": ["divclust.update_interval=20", "divclust.threshold_momentum=0.01"],
    "fast (T=4, m=0.05)": ["divclust.update_interval=4", "divclust.threshold_momentum=0.05"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[1.0, 0.6, 0.4])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value overrides")
    args = parser.parse_args()
    print("| setting | D^T | D^R reached | final d | L_div last epoch | held-out ACC | NMI | s |")
    print("|---|---|---|---|---|---|---|---|")
    for setting in args.settings:
        for target in args.targets:
            overrides = BASE + SETTINGS[setting] + args.extra + [
                f"divclust.n_heads={args.heads}",
                f"divclust.diversity_target={target}",
                f"trainer.epochs={args.epochs}",
            ]  # fmt: skip
            start = time.perf_counter()
            result = fit_deep(load_deep_config(None, overrides))
            last = result.history[-1]
            holdout = result.metrics["holdout"]
            print(
                f"| {setting} | {target} | {result.reports['diversity_reached']:.3f} "
                f"| {last['threshold']:.3f} | {last['diversity']:.4f} | {holdout['acc']:.3f} "
                f"| {holdout['nmi']:.3f} | {time.perf_counter() - start:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
