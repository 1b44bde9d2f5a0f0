"""Parallel trials write to one default MLflow store (SQLite) and lose nothing."""

from __future__ import annotations

import multiprocessing
import time

from mlflow import MlflowClient

from rayclust import tracking

N_WRITERS = 8
N_METRICS = 200


def _writer(uri: str, parent_run_id: str, worker: int, barrier, results) -> None:
    run = tracking.open_run(
        {"worker": worker},
        uri=uri,
        experiment="concurrency",
        tags={"rayclust.trial_id": f"trial-{worker}"},
        parent_run_id=parent_run_id,
        reuse_tag="rayclust.trial_id",
    )
    barrier.wait(timeout=300)  # every writer has its run open: all start logging together
    first = time.time()
    for step in range(N_METRICS):  # one call, hence one transaction, per metric
        run.log_metrics({"value": worker * 1000 + step}, step=step)
    last = time.time()
    run.end("FINISHED")
    results.put((worker, run.run_id, first, last))


def test_eight_writers_times_200_metrics_lose_none(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)  # the default store: SQLite beside the runs
    with tracking.start_run({"sweep": "concurrency"}, uri=uri, experiment="concurrency") as parent:
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(N_WRITERS), context.Queue()
        writers = [
            context.Process(target=_writer, args=(uri, parent.run_id, w, barrier, results))
            for w in range(N_WRITERS)
        ]
        for writer in writers:
            writer.start()
        done = sorted(results.get(timeout=600) for _ in writers)
        for writer in writers:
            writer.join(timeout=60)
            assert writer.exitcode == 0
    run_ids = [run_id for _, run_id, _, _ in done]
    # They overlapped: every writer began before any had finished its 200 metrics.
    assert max(first for *_, first, _ in done) < min(last for *_, last in done), done
    client = MlflowClient(tracking_uri=uri)
    assert len(set(run_ids)) == N_WRITERS
    children = tracking.child_runs(uri, parent.run_id)
    assert sorted(c.info.run_id for c in children) == sorted(run_ids)
    for worker, run_id in enumerate(run_ids):
        record = client.get_run(run_id)
        assert record.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "value")
        assert len(history) == N_METRICS
        assert sorted((m.step, m.value) for m in history) == [
            (step, float(worker * 1000 + step)) for step in range(N_METRICS)
        ]


def test_reuse_tag_reopens_the_trials_run_instead_of_a_second_one(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    with tracking.start_run(uri=uri, experiment="reuse") as parent:
        first = tracking.open_run(
            {"k": 3},
            uri=uri,
            experiment="reuse",
            tags={"rayclust.trial_id": "t1"},
            parent_run_id=parent.run_id,
            reuse_tag="rayclust.trial_id",
        )
        first.log_metrics({"m": 1.0}, step=0)
        first.end("FAILED")  # an errored trial...
        again = tracking.open_run(  # ...retried: the same params, the same run
            {"k": 3},
            uri=uri,
            experiment="reuse",
            tags={"rayclust.trial_id": "t1"},
            parent_run_id=parent.run_id,
            reuse_tag="rayclust.trial_id",
        )
        assert again.run_id == first.run_id
        assert MlflowClient(tracking_uri=uri).get_run(again.run_id).info.status == "RUNNING"
        again.log_metrics({"m": 2.0}, step=1)
        again.end("FINISHED")
        other = tracking.open_run(
            uri=uri,
            experiment="reuse",
            tags={"rayclust.trial_id": "t2"},
            parent_run_id=parent.run_id,
            reuse_tag="rayclust.trial_id",
        )
        other.end()
    children = tracking.child_runs(uri, parent.run_id)
    assert [c.data.tags["rayclust.trial_id"] for c in children] == ["t1", "t2"]
    history = MlflowClient(tracking_uri=uri).get_metric_history(first.run_id, "m")
    assert [m.value for m in history] == [1.0, 2.0]
