"""Choosing k: the shared KSelection record and the eigengap criterion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayclust.cluster.choose_k import (
    KSelection,
    eigengap_scores,
    eigengap_selection,
    select_best,
)


def test_eigengap_picks_the_k_after_the_jump():
    # Three near-zero eigenvalues, then a jump: three well separated groups.
    eigenvalues = np.array([0.0, 0.01, 0.02, 0.60, 0.65, 0.70, 0.72])
    selection = eigengap_selection(eigenvalues)
    assert selection.method == "eigengap"
    assert selection.ks == [2, 3, 4, 5, 6]
    assert selection.chosen == 3
    np.testing.assert_allclose(selection.scores, [0.01, 0.58, 0.05, 0.05, 0.02], atol=1e-12)
    assert selection.details["eigenvalues"] == pytest.approx(eigenvalues.tolist())


def test_eigengap_scores_are_consecutive_differences():
    eigenvalues = np.array([0.0, 0.1, 0.3, 0.6, 1.0])
    np.testing.assert_allclose(eigengap_scores(eigenvalues, [1, 2, 3, 4]), [0.1, 0.2, 0.3, 0.4])


def test_eigengap_respects_candidate_range_and_sorts_input():
    eigenvalues = np.array([1.25, 0.0, 0.0, 0.75, 0.25, 1.0])  # unsorted on purpose
    # Sorted: 0, 0, 0.25, 0.75, 1, 1.25 -> the biggest gap (0.5) is after k=3.
    assert eigengap_selection(eigenvalues).chosen == 3
    # Restricted to k in {4, 5}: gaps 0.25 and 0.25 -> the tie goes to the smaller k.
    restricted = eigengap_selection(eigenvalues, [5, 4])
    assert restricted.ks == [4, 5]
    assert restricted.chosen == 4


def test_relative_eigengap_prefers_the_jump_out_of_the_near_zero_band():
    # A dense, growing spectrum after three near-zero eigenvalues (2-D data): the absolute
    # step 0.20 -> 0.45 beats the jump at k=3, the relative gap does not.
    eigenvalues = np.array([0.0, 0.0, 0.0, 0.1, 0.2, 0.45])
    assert eigengap_selection(eigenvalues).chosen == 5
    relative = eigengap_selection(eigenvalues, relative=True)
    assert relative.chosen == 3
    assert relative.details["gap"] == "relative"
    np.testing.assert_allclose(
        relative.scores, [0.0, 0.1 / 0.15, 0.1 / 0.25, 0.25 / 0.5], rtol=1e-12
    )
    # Numerical zeros are not jumps: 1e-7 over a near-zero band scores about 0.
    assert eigengap_scores(np.array([0.0, 1e-7, 2e-7]), [1], relative=True)[0] < 1e-5


def test_eigengap_needs_enough_eigenvalues():
    with pytest.raises(ValueError, match="eigengap for k up to 5 needs 6 eigenvalues, got 4"):
        eigengap_scores(np.array([0.0, 0.1, 0.2, 0.3]), [2, 5])
    with pytest.raises(ValueError, match="should be sorted in ascending order"):
        eigengap_scores(np.array([0.0, 0.5, 0.2, 0.9]), [2])
    with pytest.raises(ValueError, match="k_range contains k=10; every candidate should be <= "):
        eigengap_selection(np.linspace(0, 1, 12), [2, 10], n_samples=8)


def test_select_best_takes_highest_score_and_smallest_k_on_ties():
    selection = select_best("silhouette", [2, 3, 4, 5], [0.2, 0.7, 0.7, 0.1])
    assert selection.chosen == 3
    assert select_best("stability", [4], [0.5]).chosen == 4
    # NaN scores (e.g. a k where the score is undefined) are skipped, not chosen.
    assert select_best("silhouette", [2, 3], [float("nan"), 0.1]).chosen == 3


def test_select_best_rejects_bad_curves():
    with pytest.raises(ValueError, match=r"len\(ks\)=2 should equal len\(scores\)=3"):
        select_best("silhouette", [2, 3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="ks is empty"):
        select_best("silhouette", [], [])
    with pytest.raises(ValueError, match="every silhouette score is NaN"):
        select_best("silhouette", [2, 3], [float("nan"), float("nan")])


def test_kselection_record_is_plain_data():
    selection = KSelection("eigengap", [2, 3], [0.1, 0.4], 3, {"eigenvalues": [0.0, 0.1, 0.2]})
    record = selection.to_dict()
    assert record == {
        "method": "eigengap",
        "ks": [2, 3],
        "scores": [0.1, 0.4],
        "chosen": 3,
        "details": {"eigenvalues": [0.0, 0.1, 0.2]},
    }
    assert json.loads(json.dumps(record)) == record  # what MLflow and the run folder get
    with pytest.raises(ValueError, match=r"chosen=7 should be one of ks=\[2, 3\]"):
        KSelection("eigengap", [2, 3], [0.1, 0.4], 7)
    with pytest.raises(ValueError, match=r"len\(ks\)=2 should equal len\(scores\)=1"):
        KSelection("eigengap", [2, 3], [0.1], 2)
