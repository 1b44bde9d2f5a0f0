"""The actor-pool engine (``extraction.engine: actors``, the default): all views at once.

1. Each view with work gets ``actors_per_view`` Ray actors, each a :class:`ViewWorker` that
   builds the view itself from its ViewSpec (models never travel through the object store).
2. An actor runs two ``extract`` calls at a time, so decoding the next batch overlaps the
   forward pass of the current one (the worker's lock keeps forwards serial).
3. The driver hands batches to whichever actor is free, across all views, and gives each
   returned batch to the view's :class:`ViewWriter` (one shard per batch), so an interrupted
   run resumes from what is on disk. A dead actor is restarted by Ray (``max_restarts``) and
   its calls retried; the store drops ids it already holds, so each image is stored once
   whatever is retried. A view whose actors all died for good raises.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rayclust.config import ExtractionConfig
from rayclust.ray_session import ensure_ray
from rayclust.views.worker import FaultHooks, ViewWorker
from rayclust.views.writer import ExtractionJob, ExtractionResult, ViewWriter

log = logging.getLogger(__name__)

CALLS_IN_FLIGHT_PER_ACTOR = 2  # one decoding while the other runs its forward pass
_WAIT_S = 10.0  # wake up at least this often (progress lines)


@dataclass
class ActorResources:
    """What each extraction actor declares (Ray places it) and how it uses it."""

    cpus: float
    gpus: float
    threads: int  # torch threads of the forward pass
    decode_workers: int


def plan_actor_resources(
    config: ExtractionConfig,
    n_actors: int,
    total: dict[str, float],
    available: dict[str, float],
) -> ActorResources:
    """Declare what each actor needs, from the cluster's resources.

    The one place that decides CPU or GPU for this engine; the decision is logged.
    """
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) > 0 else 0.0
    cpus = config.cpus_per_actor
    if cpus is None:
        cpus = float(max(1, int(available.get("CPU", 1) // max(1, n_actors))))
    threads = max(1, int(round(cpus)))
    # On a GPU the forward is quick and decoding is the bottleneck: give it every CPU.
    # On a CPU the forward already uses them; one decode thread overlaps with it.
    decode_workers = threads if gpus > 0 else 1
    if n_actors * cpus > total.get("CPU", 0) or n_actors * gpus > total.get("GPU", 0):
        log.warning(
            "%d extraction actors x (%g CPU, %g GPU) exceed the cluster (%g CPU, %g GPU); "
            "some start only when others finish",
            n_actors, cpus, gpus, total.get("CPU", 0), total.get("GPU", 0),
        )  # fmt: skip
    log.info(
        "extraction actors: %d x (num_cpus=%g, num_gpus=%g, torch threads=%d, decode threads=%d)",
        n_actors, cpus, gpus, threads, decode_workers,
    )  # fmt: skip
    return ActorResources(cpus, gpus, threads, decode_workers)


@dataclass
class _ViewPool:
    """One view's actors and the batches they have yet to take."""

    writer: ViewWriter
    batches: deque
    n_actors: int
    actors: list = field(default_factory=list)
    ready: set = field(default_factory=set)  # indices whose view is built
    dead: set = field(default_factory=set)  # indices that died for good
    calls: dict = field(default_factory=dict)  # actor index -> extract calls in flight

    @property
    def name(self) -> str:
        return self.writer.name

    def finished(self) -> bool:
        return not self.batches and not any(self.calls.values())

    def starting(self) -> int:
        return len(self.actors) - len(self.ready) - len(self.dead)


def extract_with_actors(job: ExtractionJob) -> dict[str, ExtractionResult]:
    """Run ``job`` on Ray actor pools, one per view, all views at once."""
    writers = job.open_writers()
    pools = [
        _ViewPool(writer, deque(batches), min(job.config.actors_per_view, len(batches)))
        for writer in writers
        if (batches := writer.batches())
    ]
    for writer in writers:
        if not writer.todo:  # all cached: done now, its on_view_done need not wait for others
            writer.finish()
    if pools:
        _Driver(job, pools).run()
    return {writer.name: writer.result() for writer in writers}


class _Driver:
    """Hands batches to free actors across all views and writes what comes back."""

    def __init__(self, job: ExtractionJob, pools: list[_ViewPool]) -> None:
        import ray

        ensure_ray()
        self.ray = ray
        self.job = job
        self.config = job.config
        self.pools = pools
        self.resources = plan_actor_resources(
            self.config,
            sum(pool.n_actors for pool in pools),
            ray.cluster_resources(),
            ray.available_resources(),
        )
        # ref -> (pool, actor index, batch); batch None: the actor's ``info`` call
        self.pending: dict[Any, tuple[_ViewPool, int, list | None]] = {}

    def run(self) -> None:
        try:
            for pool in self.pools:
                self._start_actors(pool)
            while self.pending and not self.job.stopped:
                ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=_WAIT_S)
                for ref in ready:
                    if ref in self.pending:  # else its view was retired earlier in this loop
                        self._collect(ref, *self.pending.pop(ref))
        finally:
            for pool in self.pools:
                if pool.actors:
                    self._retire(pool)

    def _start_actors(self, pool: _ViewPool) -> None:
        resources = self.resources
        actor_cls = self.ray.remote(ViewWorker).options(
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
            max_restarts=self.config.max_restarts,
            max_task_retries=self.config.max_restarts,
            max_concurrency=CALLS_IN_FLIGHT_PER_ACTOR,
        )
        hooks = FaultHooks.from_env(pool.writer.store)
        for index in range(pool.n_actors):
            handle = actor_cls.remote(
                pool.writer.spec,
                num_threads=resources.threads,
                decode_workers=resources.decode_workers,
                max_pixels=self.job.max_pixels,
                hooks=hooks,
                storage_options=self.job.storage_options,
            )
            pool.actors.append(handle)
            pool.calls[index] = 0
            # Work goes only to actors that came up, so an actor still waiting for
            # resources never holds batches hostage.
            self.pending[handle.info.remote()] = (pool, index, None)

    def _submit(self, pool: _ViewPool, actor: int) -> None:
        while pool.batches and pool.calls[actor] < CALLS_IN_FLIGHT_PER_ACTOR:
            batch = pool.batches.popleft()
            self.pending[pool.actors[actor].extract.remote(batch)] = (pool, actor, batch)
            pool.calls[actor] += 1

    def _retire(self, pool: _ViewPool) -> None:
        # Free the actors' CPUs / GPUs at once so another view's waiting actors can start.
        for handle in pool.actors:
            self.ray.kill(handle, no_restart=True)
        pool.actors = []
        for ref in [ref for ref, (owner, _, _) in self.pending.items() if owner is pool]:
            del self.pending[ref]
        pool.writer.finish()

    def _give_back(self, pool: _ViewPool, actor: int, batch: list) -> None:
        pool.calls[actor] -= 1
        pool.batches.appendleft(batch)

    def _collect(self, ref: Any, pool: _ViewPool, actor: int, batch: list | None) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        try:
            output = self.ray.get(ref)
        except ActorUnavailableError:
            # Unreachable for now (restarting, network) and out of task retries: the batch
            # goes back in the queue, the actor may take it again.
            if batch is None:
                self.pending[pool.actors[actor].info.remote()] = (pool, actor, None)
                return
            self._give_back(pool, actor, batch)
            for index in pool.ready:
                self._submit(pool, index)
            return
        except RayActorError as exc:
            self._lost(pool, actor, batch, exc)
            return
        if batch is None:  # the actor's view is built
            pool.ready.add(actor)
            pool.writer.devices.append(output["device"])
        else:
            pool.calls[actor] -= 1
            pool.writer.write_output(output)
            if self.job.stopped:
                return
        self._submit(pool, actor)
        if pool.finished():
            self._retire(pool)

    def _lost(self, pool: _ViewPool, actor: int, batch: list | None, exc: Exception) -> None:
        """Ray already restarted the actor max_restarts times: its batch goes to the others."""
        if batch is not None:
            self._give_back(pool, actor, batch)
        if actor not in pool.dead:
            log.warning("an extraction actor of view %s died for good: %s", pool.name, exc)
        pool.dead.add(actor)
        pool.ready.discard(actor)
        if getattr(exc, "actor_init_failed", False):
            raise RuntimeError(f"could not build view {pool.name} in its actor: {exc}") from exc
        if not pool.ready and not pool.starting():
            raise RuntimeError(
                f"every extraction actor of view {pool.name} died "
                f"(max_restarts={self.config.max_restarts} used up): {exc}"
            ) from exc
        for other in pool.ready:
            self._submit(pool, other)
