"""Bjerge et al.'s grid, scaled down to a shared 2-core CPU (issue 20).

K-means and spectral clustering x alpha in {0, 0.25, 0.5, 0.75, 1} x 3 training seeds x
both epoch rules (the paper's: K-means on the validation classes, ``kmeans_acc``; ours:
the last epoch) x both scatter variants (``raw``: the scatter on raw features as the
authors' code does in cosine mode; ``same``: on the L2-normalised features the classifier
scores). alpha = 0 has no scatter term, so its two variants are one run: 27 training runs.

One training run serves both rules and both algorithms: it records every validation score
each epoch (``validation.select_epoch=kmeans_acc``), keeps every epoch's backbone, scores
each epoch's backbone on the clustering classes afterwards (one feature extraction, K-means
and spectral on the same features), and the rules pick their epoch from the history with
``rayclust.train.config.select_epoch``, which never looks at the clustering classes.

Training is ``rayclust.train.loop.TrainWorker`` in this process (one worker, the same loop
Ray Train runs): no worker-group start per cell. Every cell writes ``cell.json`` when done;
a re-run skips finished cells, so a stop loses at most the cell in progress.

    nice -n 10 python experiments/bjerge_grid.py            # run (or continue) the grid
    python experiments/bjerge_grid.py --table               # the Markdown table of what is done
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rayclust import metrics
from rayclust.cluster.registry import create_estimator
from rayclust.config import load_config
from rayclust.train import loop as train_loop
from rayclust.train.config import TrainConfig, select_epoch
from rayclust.train.data import ImageBatcher, LabeledImages, load_splits
from rayclust.train.export import checkpoint_view_name
from rayclust.train.loop import BACKBONE_FILE, TrainWorker
from rayclust.train.model import build_backbone, set_train_mode
from rayclust.train.runtime import WorkerContext

CONFIG = Path(__file__).with_name("finetune.yaml")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SCATTER = ("raw", "same")
RULES = {"kmeans_acc": "paper (K-means on val. classes)", "last": "ours (last epoch)"}
ALGORITHMS = ("kmeans", "spectral")
SCORES = ("nmi", "ari", "acc")
CLUSTER_SEEDS = 5
# The scaled-down setting (the paper's in experiments/README.md): what differs from
# experiments/finetune.yaml.
SMALL = {
    "epochs": 3,
    "data": {"image_size": 64},
    "episodic": {"k_shot": 2, "q_query": 3, "episodes_per_epoch": 5},  # 5-way: 25 images
    "validation": {"select_epoch": "kmeans_acc"},
    "scaling": {"num_workers": 1},
    "tracking": {"enabled": False},
    "evaluation": {"enabled": False},  # every epoch is scored here instead
}
PER_CLASS = 25  # clustering images per class (the first of a fixed shuffle)


def cells(seeds: list[int]) -> list[tuple[int, float, str]]:
    """alpha 0, 0.5 and 1 over every seed first, then 0.25 and 0.75: a stopped grid still
    has seed spreads for the comparisons that matter most (no scatter / half / only)."""
    return [
        (seed, alpha, scatter)
        for group in ((0.0, 0.5, 1.0), (0.25, 0.75))
        for seed in seeds
        for alpha in group
        for scatter in (SCATTER if alpha > 0 else ("same",))
    ]


def cell_name(seed: int, alpha: float, scatter: str) -> str:
    return f"s{seed}-a{alpha:g}-{scatter}"


def cell_config(seed: int, alpha: float, scatter: str) -> TrainConfig:
    overrides = {
        **SMALL,
        "seed": seed,
        "episodic": {**SMALL["episodic"], "alpha": alpha, "scatter_on": scatter},
    }
    return load_config(CONFIG, overrides, schema=TrainConfig)


_DECODED: dict[tuple[Any, ...], torch.Tensor] = {}


class SharedDecodeBatcher(ImageBatcher):
    """An ImageBatcher whose decoded images outlive it. Every cell reads the same files at
    the same size, and on the loaded machine decoding the PNGs, not the small network,
    took most of a cell; the pixels are exactly what ImageBatcher makes."""

    def _load(self, row: int) -> torch.Tensor:
        key = (self.paths[row], self.image_size, self.resize_to, self.resample, self.max_pixels)
        if key not in _DECODED:
            _DECODED[key] = super()._load(row)
        return _DECODED[key]


def batcher_for(view: str, images: LabeledImages, image_size: int) -> ImageBatcher:
    """One per cell: it keeps the decoded images, so each epoch's backbone reuses them."""
    backbone = build_backbone(view)
    return SharedDecodeBatcher(
        images.paths,
        image_size,
        backbone.mean,
        backbone.std,
        crop_pct=backbone.crop_pct,
        interpolation=backbone.interpolation,
    )


def capped(images: LabeledImages, per_class: int) -> LabeledImages:
    order = np.random.default_rng(0).permutation(len(images))
    keep = sorted(
        row
        for label in range(len(images.class_names))
        for row in [r for r in order if images.labels[r] == label][:per_class]
    )
    return LabeledImages(
        [images.paths[r] for r in keep], images.labels[keep], list(images.class_names)
    )


@torch.no_grad()
def score_view(view: str, images: LabeledImages, batcher: ImageBatcher) -> dict[str, Any]:
    """Cluster ``images`` with the view's L2-normalised features at the batcher's (the
    training) size: per algorithm, each score's mean and per-seed values over
    CLUSTER_SEEDS seeds."""
    model = set_train_mode(build_backbone(view).model, False)
    rows = list(range(len(images)))
    parts = [model(batcher.batch(rows[i : i + 32])) for i in range(0, len(rows), 32)]
    features = F.normalize(torch.cat(parts).float(), dim=1).numpy()
    k = len(images.class_names)
    out: dict[str, Any] = {}
    for algorithm in ALGORITHMS:
        per_seed = []
        for seed in range(CLUSTER_SEEDS):
            estimator = create_estimator(algorithm, k, random_state=seed, backend="sklearn")
            scores = metrics.external_scores(images.labels, estimator.fit_predict(features))
            per_seed.append({s: scores[s] for s in SCORES})
        out[algorithm] = {
            "mean": {s: float(np.mean([p[s] for p in per_seed])) for s in SCORES},
            "per_seed": per_seed,
        }
    return out


def run_cell(root: Path, seed: int, alpha: float, scatter: str) -> dict[str, Any]:
    folder = root / cell_name(seed, alpha, scatter)
    done = folder / "cell.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    config = cell_config(seed, alpha, scatter)
    data = config.data
    names = {
        "train_classes": data.train_classes,
        "val_classes": data.val_classes,
        "cluster_classes": data.cluster_classes,
    }
    splits = load_splits(data.source, names, max_pixels=data.max_pixels)
    folder.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []

    def keep_epoch(epoch_metrics: dict[str, Any], checkpoint: Path | None) -> None:
        history.append(dict(epoch_metrics))
        epoch = epoch_metrics["epoch"]
        shutil.copyfile(checkpoint / BACKBONE_FILE, folder / f"epoch{epoch}.safetensors")

    worker = TrainWorker(config, splits, context=WorkerContext(report=keep_epoch))
    worker.run()
    train_s = time.perf_counter() - started
    cluster_images = capped(splits["cluster_classes"], PER_CLASS)
    batcher = batcher_for(config.view, cluster_images, data.image_size)
    selected = {rule: select_epoch(history, rule) for rule in RULES}
    per_epoch = {}
    for entry in history:
        path = folder / f"epoch{entry['epoch']}.safetensors"
        if entry["epoch"] in selected.values():  # only what a rule keeps is scored
            view = checkpoint_view_name(worker.arch, path)
            per_epoch[str(entry["epoch"])] = score_view(view, cluster_images, batcher)
        path.unlink()  # 14 MB each; the scores are what the grid keeps
    record = {
        "seed": seed,
        "alpha": alpha,
        "scatter_on": scatter,
        "history": history,
        "selected": selected,
        "clustering": per_epoch,
        "train_s": train_s,
        "total_s": time.perf_counter() - started,
    }
    done.write_text(json.dumps(record, indent=1))
    return record


def run_baseline(root: Path) -> dict[str, Any]:
    """The untouched ImageNet backbone, same images, same size, same clustering."""
    done = root / "pretrained.json"
    if done.is_file():
        return json.loads(done.read_text())
    config = cell_config(0, 0.0, "same")
    splits = load_splits(config.data.source, {"cluster_classes": config.data.cluster_classes})
    images = capped(splits["cluster_classes"], PER_CLASS)
    record = score_view(
        config.view, images, batcher_for(config.view, images, config.data.image_size)
    )
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record, indent=1))
    return record


def _avg_sd(values: list[float]) -> str:
    """AVG (SD); one value alone has no spread to show."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return metrics.format_avg_sd(float(np.mean(values)), float(np.std(values)))


def table(root: Path, seeds: list[int]) -> str:
    """AVG (SD) over the finished training seeds of each cell's 5-seed clustering mean."""
    header = (
        "| alpha | scatter | epoch rule | seeds | epochs kept | "
        + " | ".join(f"{a} {s.upper()}" for a in ("K-means", "spectral") for s in SCORES)
        + " |"
    )
    lines = [header, "|" + "---|" * (5 + 2 * len(SCORES))]
    baseline = root / "pretrained.json"
    if baseline.is_file():
        pre = json.loads(baseline.read_text())
        cols = [
            metrics.format_avg_sd(
                float(np.mean([p[s] for p in pre[a]["per_seed"]])),
                float(np.std([p[s] for p in pre[a]["per_seed"]])),
            )
            for a in ALGORITHMS
            for s in SCORES
        ]
        lines.append("| none (ImageNet) | - | - | - | - | " + " | ".join(cols) + " |")
    for alpha in ALPHAS:
        for scatter in SCATTER if alpha > 0 else ("same",):
            records = [
                json.loads(path.read_text())
                for seed in seeds
                if (path := root / cell_name(seed, alpha, scatter) / "cell.json").is_file()
            ]
            if not records:
                continue
            for rule, label in RULES.items():
                epochs = [r["selected"][rule] for r in records]
                cols = [
                    _avg_sd(
                        [r["clustering"][str(r["selected"][rule])][a]["mean"][s] for r in records]
                    )
                    for a in ALGORITHMS
                    for s in SCORES
                ]
                shown = "raw = same" if alpha == 0 else scatter
                lines.append(
                    f"| {alpha:g} | {shown} | {label} | {len(records)} | "
                    f"{','.join(map(str, epochs))} | " + " | ".join(cols) + " |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bjerge_grid", help="grid folder (resumable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table", action="store_true", help="print the table of finished cells")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (one: no OpenMP waits on a busy machine)",
    )
    args = parser.parse_args()
    root = Path(args.out)
    if args.table:
        print(table(root, args.seeds))
        return
    torch.set_num_threads(args.threads)
    train_loop.ImageBatcher = SharedDecodeBatcher  # the workers' batchers share the decodes
    run_baseline(root)
    for seed, alpha, scatter in cells(args.seeds):
        record = run_cell(root, seed, alpha, scatter)
        print(
            f"{cell_name(seed, alpha, scatter)}: epochs {record['selected']}, "
            f"train {record['train_s']:.0f} s, total {record['total_s']:.0f} s",
            flush=True,
        )
    print(table(root, args.seeds))


if __name__ == "__main__":
    main()
