"""Multi-view ensemble clustering (MVEC) on real small features: scikit-learn's digits.

The strong view is the digits' own pixels; the weak views are noisy copies of them (Gaussian
noise as large as the signal), which K-means can barely cluster. A label-free criterion has
to find that out: the weak views get weight 0, the strong one leads, and the consensus is
not dragged down, as it is when every view counts the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from rayclust import multiview
from rayclust.ensemble import create_consensus
from rayclust.metrics import format_avg_sd

pytestmark = pytest.mark.timeout(300)

N_SAMPLES = 600
N_CLUSTERS = 10
SEEDS = 3
NOISE_SD = 1.0  # pixels are in [0, 1]; this much noise leaves K-means near chance
METHODS = ["coassociation", "bipartite"]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _concat(per_view: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate(list(per_view.values()), axis=1)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x[:N_SAMPLES].astype(np.float32) / 16.0, y[:N_SAMPLES]


@pytest.fixture(scope="module")
def views(digits) -> dict[str, np.ndarray]:
    x, _ = digits
    rng = np.random.default_rng(0)
    per_view = {"pixels": _unit_rows(x)}
    for name in ("noisy_a", "noisy_b"):
        per_view[name] = _unit_rows(x + rng.normal(0.0, NOISE_SD, x.shape).astype(np.float32))
    return per_view


@pytest.fixture(scope="module")
def job() -> multiview.ClusterJob:
    return multiview.ClusterJob(algorithm="kmeans", n_clusters=N_CLUSTERS, seeds=SEEDS)


@pytest.fixture(scope="module")
def table(ray_session, views, digits, job) -> dict:
    _, y = digits
    return multiview.evaluate_views(views, _concat(views), y, job, METHODS, use_ray=True)


def _ari_per_seed(row: dict) -> list[float]:
    return [seed["ari"] for seed in row["per_seed"]]


def test_every_row_is_computed(table, views):
    expected = {f"view:{v}" for v in views} | {"concat", "leader"}
    expected |= {f"consensus:{m}" for m in METHODS}
    assert set(table["rows"]) == expected
    assert table["notes"] == {}
    for name, row in table["rows"].items():
        assert len(row["per_seed"]) == SEEDS, name
        assert row["labels"].shape == (N_SAMPLES,)
        assert len(np.unique(row["labels"])) == N_CLUSTERS
        assert {"acc", "nmi", "ari", "silhouette"} <= set(row["summary"])


def test_weak_views_are_found_without_labels(table):
    rows = table["rows"]
    # The premise: the noisy views really are weak (measured with the labels).
    strong = rows["view:pixels"]["summary"]["ari"]["mean"]
    for weak in ("noisy_a", "noisy_b"):
        assert rows[f"view:{weak}"]["summary"]["ari"]["mean"] < strong - 0.3
    # The label-free verdict.
    assert table["leader"] == "pixels"
    assert table["weights"] == {"pixels": 1.0, "noisy_a": 0.0, "noisy_b": 0.0}
    assert rows["leader"]["summary"] == rows["view:pixels"]["summary"]
    assert table["view_quality"]["pixels"] > 2 * max(
        table["view_quality"]["noisy_a"], table["view_quality"]["noisy_b"]
    )


def test_the_choice_does_not_depend_on_labels(ray_session, views, job, table):
    blind = multiview.evaluate_views(views, _concat(views), None, job, METHODS, use_ray=True)
    assert blind["leader"] == table["leader"]
    assert blind["weights"] == table["weights"]
    for name, row in blind["rows"].items():
        assert "ari" not in row["summary"], name
        np.testing.assert_array_equal(row["labels"], table["rows"][name]["labels"])


def test_weak_views_do_not_drag_the_consensus_down(table):
    rows = table["rows"]
    strong = _ari_per_seed(rows["view:pixels"])
    for method in METHODS:
        # With the weak views at weight 0, each seed's consensus is the strong partition.
        np.testing.assert_allclose(_ari_per_seed(rows[f"consensus:{method}"]), strong)


def test_equal_weights_would_have_been_worse(digits, views, job):
    # Counting every view the same: the noisy views outvote the good one.
    _, y = digits
    clustered = {view: multiview.cluster_seeds(feats, job) for view, feats in views.items()}
    strong = np.mean([adjusted_rand_score(y, p) for p in clustered["pixels"]["partitions"]])
    for method in METHODS:
        unweighted = [
            adjusted_rand_score(
                y,
                create_consensus(method, n_clusters=N_CLUSTERS).fit_predict(
                    [clustered[view]["partitions"][seed] for view in views]
                ),
            )
            for seed in range(SEEDS)
        ]
        assert np.mean(unweighted) < strong - 0.1, method


def test_views_of_similar_quality_all_count(ray_session, digits, job):
    x, y = digits
    rng = np.random.default_rng(1)
    per_view = {
        name: _unit_rows(x + rng.normal(0.0, 0.05, x.shape).astype(np.float32))
        for name in ("copy_a", "copy_b", "copy_c")
    }
    out = multiview.evaluate_views(per_view, _concat(per_view), y, job, ["bipartite"])
    assert all(weight > 0.5 for weight in out["weights"].values()), out["weights"]
    assert max(out["weights"].values()) == 1.0
    consensus = out["rows"]["consensus:bipartite"]["summary"]["ari"]["mean"]
    worst_view = min(out["rows"][f"view:{v}"]["summary"]["ari"]["mean"] for v in per_view)
    assert consensus >= worst_view - 0.05


@pytest.mark.parametrize(
    "quality, min_relative, expected",
    [
        ({"a": 0.4, "b": 0.3, "c": 0.1}, 0.5, {"a": 1.0, "b": 0.75, "c": 0.0}),
        ({"a": 0.4, "b": 0.3, "c": 0.1}, 0.0, {"a": 1.0, "b": 0.75, "c": 0.25}),
        ({"a": 0.2, "b": -0.1, "c": float("nan")}, 0.0, {"a": 1.0, "b": 0.0, "c": 0.0}),
        # No view has a positive score: nothing to rank them by, so all count the same.
        ({"a": -0.2, "b": -0.1}, 0.5, {"a": 1.0, "b": 1.0}),
    ],
)
def test_view_weights_by_hand(quality, min_relative, expected):
    weights = multiview.view_weights(quality, min_relative)
    assert weights.keys() == expected.keys()
    for view, weight in expected.items():
        assert weights[view] == pytest.approx(weight)


def test_table_markdown_has_one_row_per_method(table):
    text = multiview.table_markdown(table["rows"], ["acc", "ari", "no_such_metric"])
    lines = text.strip().splitlines()
    assert lines[0] == "| method | acc | ari | no_such_metric |"
    assert lines[1] == "|---|---|---|---|"
    assert len(lines) == 2 + len(table["rows"])
    by_name = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(by_name) == set(table["rows"])
    ari = table["rows"]["consensus:bipartite"]["summary"]["ari"]
    cells = [cell.strip() for cell in by_name["consensus:bipartite"].split("|")[1:-1]]
    assert cells[2] == format_avg_sd(ari["mean"], ari["std"])
    assert cells[3] == "-"


def test_auto_k_consensus_takes_the_leaders_k(views):
    job = multiview.ClusterJob(algorithm="kmeans", n_clusters="auto", seeds=1)
    pair = {name: views[name] for name in ("pixels", "noisy_a")}
    out = multiview.evaluate_views(pair, _concat(pair), None, job, METHODS, use_ray=False)
    assert out["leader"] == "pixels"
    leader_k = len(np.unique(out["rows"]["leader"]["labels"]))
    assert leader_k >= 2
    for method in METHODS:
        assert len(np.unique(out["rows"][f"consensus:{method}"]["labels"])) == leader_k
