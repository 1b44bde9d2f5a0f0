"""Hyperparameter sweeps with Ray Tune over any stage, tracked in MLflow.

``run_sweep(load_sweeps(path)[name][0], base_dir)`` or ``rayclust tune CONFIG``: a search
space in YAML over the stage's config keys (``space``), one trial per drawn config on
features the driver extracted once (``objective``), Tuner set-up, resume and the MLflow
parent / child runs (``runner``), best config, table and plots (``summary``).
"""

from rayclust.tune.config import SweepConfig, load_sweeps
from rayclust.tune.runner import SweepResult, run_sweep
from rayclust.tune.space import SearchSpace

__all__ = ["SearchSpace", "SweepConfig", "SweepResult", "load_sweeps", "run_sweep"]
