"""What a finished sweep leaves in its folder and in the MLflow parent run.

    trials.csv         one row per trial: id, status, searched values, objective, all metrics
    results.md         the same, best first, as a table people can paste
    best_config.yaml   the best trial's full config: ``rayclust run`` / ``train`` / ``deep`` it
    plots/<key>.png    the objective against each searched key (one point per trial)

A trial's objective is its best reported value (training trials report every epoch).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.tune.config import SweepConfig
from rayclust.tune.space import SearchSpace

log = logging.getLogger("rayclust.tune")

RUN_COMMAND = {"cluster": "rayclust run", "train": "rayclust train", "deep": "rayclust deep"}


def _trial_rows(grid, space: SearchSpace, metric: str, mode: str) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        config = result.config or {}
        history = result.metrics_dataframe
        objective = float("nan")
        if history is not None and metric in history:
            values = history[metric].astype(float).dropna()
            if len(values):
                objective = float(values.max() if mode == "max" else values.min())
        metrics = result.metrics or {}
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id") or Path(result.path).name,
            "status": "ERROR" if result.error else "TERMINATED",
            **{key: config.get(key) for key in space.keys},
            "objective": objective,
            "iterations": metrics.get("training_iteration"),
        }
        for key, value in metrics.items():
            if key in row or key in ("config", "trial_id", "date", "hostname", "node_ip", "pid"):
                continue
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                row[key] = float(value)
        rows.append(row)
    worst = -math.inf if mode == "max" else math.inf
    return sorted(
        rows,
        key=lambda r: r["objective"] if math.isfinite(r["objective"]) else worst,
        reverse=mode == "max",
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "null"
    return str(value)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _write_markdown(path: Path, rows, space: SearchSpace, sweep: SweepConfig) -> None:
    metric = sweep.objective.metric
    columns = ["trial_id", "status", *space.keys, "objective"]
    if sweep.stage == "train":
        columns.append("iterations")  # epochs run: fewer than asked where ASHA stopped it
    header = f"| {' | '.join(c if c != 'objective' else f'{metric} ({sweep.objective.mode})' for c in columns)} |"
    lines = [
        f"# Sweep {sweep.name}: {len(rows)} trials, stage {sweep.stage}, best first",
        "",
        header,
        "|" + "---|" * len(columns),
    ]
    lines += [f"| {' | '.join(_fmt(row.get(c)) for c in columns)} |" for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _plot(path: Path, key: str, rows, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [row[key] for row in rows]
    scores = [row["objective"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    numeric = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None
    ) and any(v is not None for v in values)
    if numeric and None not in values:
        ax.scatter(values, scores, alpha=0.75)
    else:  # categories (and null) at integer positions, labelled
        labels = sorted({_fmt(v) for v in values})
        position = {label: i for i, label in enumerate(labels)}
        jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(values))
        ax.scatter([position[_fmt(v)] + j for v, j in zip(values, jitter, strict=True)], scores,
                   alpha=0.75)  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {key} ({len(rows)} trials)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_name(key: str) -> str:
    return key.replace("/", "_") + ".png"


def write_summary(grid, space: SearchSpace, sweep: SweepConfig, sweep_dir: Path, parent=None):
    """Write the sweep folder's summary files; log them and the best scores to ``parent``."""
    metric, mode = sweep.objective.metric, sweep.objective.mode
    rows = _trial_rows(grid, space, metric, mode)
    _write_csv(sweep_dir / "trials.csv", rows)
    _write_markdown(sweep_dir / "results.md", rows, space, sweep)
    plots = sweep_dir / "plots"
    plots.mkdir(exist_ok=True)
    for key in space.keys:
        _plot(plots / _plot_name(key), key, rows, metric)

    finished = [r for r in rows if math.isfinite(r["objective"])]
    best_config_path = sweep_dir / "best_config.yaml"
    best_params: dict[str, Any] = {}
    best_metrics: dict[str, Any] = {}
    if finished:
        best = finished[0]
        best_params = {key: best[key] for key in space.keys}
        best_metrics = {k: v for k, v in best.items() if k not in space.keys}
        config = space.trial_config(best_params)
        config = _runnable(config, sweep)
        config.to_yaml(best_config_path)
        header = (
            f"# Best of sweep {sweep.name}: {metric}={best['objective']:.4g} (trial "
            f"{best['trial_id']}).\n# Run it: {RUN_COMMAND[sweep.stage]} {best_config_path}\n"
        )
        best_config_path.write_text(header + best_config_path.read_text())
    else:
        log.warning("no trial of sweep %s reported %s; no best_config.yaml", sweep.name, metric)
    n_errored = sum(r["status"] == "ERROR" for r in rows)
    if parent is not None:
        parent.log_metrics(
            {
                f"best_{metric}": best_metrics.get("objective"),
                "n_trials": len(rows),
                "n_errored": n_errored,
            }
        )
        for name in ("trials.csv", "results.md", "best_config.yaml", "features.json", "base.yaml"):
            if (sweep_dir / name).is_file():
                parent.log_artifact(sweep_dir / name)
        parent.log_artifacts(plots, "plots")
    log.info("sweep %s: %d trials, best %s=%s", sweep.name, len(rows), metric,
             _fmt(best_metrics.get("objective")))  # fmt: skip
    return {
        "rows": rows,
        "best_params": best_params,
        "best_metrics": best_metrics,
        "best_config_path": best_config_path,
        "n_trials": len(rows),
        "n_errored": n_errored,
    }


def _runnable(config, sweep: SweepConfig):
    """The best trial's config as a fresh run: its own name, default run folder."""
    from dataclasses import replace

    name = f"{sweep.name}-best"
    if sweep.stage == "deep":
        return replace(config, name=name, output=f"runs/{name}")
    return replace(config, name=name, output=None)
