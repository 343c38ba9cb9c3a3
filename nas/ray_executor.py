"""Scoring candidates on a pool of Ray actors that each hold the PruningNet and its data in memory.

Scoring one candidate takes a fraction of a second, about what Ray charges to start a task, so the
scorer is built once per actor (`ScoringActor.__init__`) and candidates stream to the actors in
small chunks, a few in flight per actor so that none waits for the driver between chunks.

Faults: Ray restarts an actor whose process dies (`MAX_RESTARTS`); the chunks it held fail and go
back to the queue for any live actor, and the restarted actor rejoins the pool once it answers a
probe. A result is yielded at most once, so a chunk that ran twice is never recorded twice. A chunk
that fails `MAX_ATTEMPTS` times, or a pool that makes no progress for `STALL_TIMEOUT_S`, raises.

This is the only module of `nas` that imports Ray.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.actor import ActorHandle
from ray.exceptions import RayActorError  # also covers ActorDiedError and ActorUnavailableError

from nas.executors import Scored, ScorerFactory, Task
from nas.ray_cluster import join

IN_FLIGHT_PER_ACTOR = 2  # one chunk computing, the next already queued on the actor
MAX_ATTEMPTS = 3  # a chunk failing this often is a poisoned candidate or a broken node, not bad luck
MAX_RESTARTS = 3  # Ray restarts a dead actor this many times, rebuilding its scorer from the factory
READY_TIMEOUT_S = 600.0  # building every scorer: shipping the factory and loading the PruningNet on a cold node
STALL_TIMEOUT_S = 1800.0  # no chunk finished and no actor came back for this long: raise rather than hang
DEVICES = ("auto", "cpu", "cuda")

ChunkResult = tuple[str, list[tuple[int, float]]]  # (node that scored it, [(slot, proxy top-1)])


class ScoringActor:
    """A worker process holding one scorer; Ray reruns `__init__` when it restarts the actor."""

    def __init__(self, factory: ScorerFactory, threads: int, device: str) -> None:
        torch.set_num_threads(threads)  # the actors of a node share its cores instead of each taking all of them
        self.scorer = factory.build(device)
        self.node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()}"

    def ready(self) -> str:
        """The node this actor runs on; answering at all means the scorer is built."""
        return self.node

    def pid(self) -> int:
        return os.getpid()

    def score_chunk(self, tasks: list[Task]) -> ChunkResult:
        return self.node, [(task.slot, self.scorer(task.config)) for task in tasks]


RemoteScoringActor: Any = ray.remote(ScoringActor)  # Ray's stubs lose the type through .options().remote()


# -- sizing the pool ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ActorPlan:
    """Resources and settings of every actor of the pool."""

    device: str  # "cpu" or "cuda" (Ray makes an actor's one GPU its cuda:0)
    num_cpus: int  # CPUs Ray reserves per actor
    num_gpus: float  # 0 on CPU; 1, or a share of one GPU when there are more actors than GPUs
    threads: int  # torch.set_num_threads inside the actor


def plan_actors(workers: int, node_cpus: list[int], gpus: int, device: str = "auto", threads: int | None = None) -> ActorPlan:
    """One actor per GPU when the cluster has GPUs (sharing them when `workers` exceeds them), otherwise
    the CPUs shared out among `workers` actors.

    On CPU, torch threads per actor are `threads`, or by default `cluster CPUs // workers`, lowered
    where nodes of unequal size could not otherwise hold `workers` actors (an actor sits on one node).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, but got {device!r}")
    if workers < 1 or (threads is not None and threads < 1):
        raise ValueError(f"workers and threads must be at least 1, but got workers={workers}, threads={threads}")
    if device == "cuda" or (device == "auto" and gpus > 0):
        if gpus == 0:
            raise ValueError("device=cuda needs GPUs, but the Ray cluster has none; use device=auto or cpu")
        # More actors than GPUs share them (scoring one candidate uses a sliver of a GPU): the default
        # workers=2 must run on a one-GPU machine. Each GPU holds `per_gpu` actors.
        per_gpu = -(-workers // gpus)
        return ActorPlan("cuda", num_cpus=1, num_gpus=1 / per_gpu, threads=1)
    least = threads or 1
    for each in range(threads or max(1, sum(node_cpus) // workers), least - 1, -1):
        if sum(cpus // each for cpus in node_cpus) >= workers:
            return ActorPlan("cpu", num_cpus=each, num_gpus=0, threads=each)
    raise ValueError(
        f"workers={workers} needs {least} CPU(s) each, but the Ray cluster has {sum(node_cpus)} CPUs "
        f"(per node: {node_cpus}); use at most {sum(cpus // least for cpus in node_cpus)} workers"
    )


def cluster_shape() -> tuple[list[int], int]:
    """CPUs of each live node, and the GPUs of the whole cluster."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    return [int(node["Resources"].get("CPU", 0)) for node in nodes], int(ray.cluster_resources().get("GPU", 0))


# -- one round ----------------------------------------------------------------------------------
@dataclass
class Chunk:
    tasks: list[Task]
    attempts: int = 0  # times it was lost with its actor

    def slots(self) -> list[int]:
        return [task.slot for task in self.tasks]


class Round:
    """The state of one `score` call: chunks waiting, chunks running (on which actor), slots yielded."""

    def __init__(self, tasks: list[Task], chunk: int) -> None:
        slots = [task.slot for task in tasks]
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots must be unique within a round, but got {sorted(slots)}")
        self.tasks = {task.slot: task for task in tasks}
        self.waiting = deque(Chunk(tasks[i : i + chunk]) for i in range(0, len(tasks), chunk))
        self.running: dict[ray.ObjectRef, tuple[int, Chunk]] = {}
        self.yielded: set[int] = set()

    def finished(self) -> bool:
        return len(self.yielded) == len(self.tasks)

    def load(self, actor: int) -> int:
        return sum(1 for index, _ in self.running.values() if index == actor)

    def requeue(self, chunk: Chunk, error: RayActorError) -> None:
        """Put a lost chunk back first in line, unless it has been lost too often."""
        chunk.attempts += 1
        if chunk.attempts >= MAX_ATTEMPTS:
            raise RuntimeError(
                f"candidates {chunk.slots()} of the round failed {chunk.attempts} times because their Ray actor died; "
                f"last error: {type(error).__name__}: {str(error).splitlines()[0]}"
            ) from error
        self.waiting.appendleft(chunk)

    def results(self, chunk: Chunk, result: ChunkResult) -> Iterator[Scored]:
        """The chunk's scores not yielded before (a chunk may have been scored twice)."""
        node, scores = result
        for slot, proxy_top1 in scores:
            if slot in self.tasks and slot not in self.yielded:
                self.yielded.add(slot)
                yield Scored(self.tasks[slot], proxy_top1, node)


# -- the executor -------------------------------------------------------------------------------
class RayExecutor:
    """Scores rounds of candidates on `workers` Ray actors, on this machine or on a cluster.

    `address` (or the RAY_ADDRESS environment variable) joins a running cluster; otherwise Ray
    starts here with all the machine's CPUs and stops in `close`. Each actor builds the scorer once
    from `factory` (shipped once through the object store) and scores `chunk` candidates per call.
    `device="auto"` puts one actor on each GPU when the cluster has GPUs, else shares out the CPUs;
    `threads` fixes the torch threads (and Ray CPUs) of each CPU actor instead.
    """

    def __init__(
        self,
        factory: ScorerFactory,
        workers: int,
        address: str | None = None,
        chunk: int = 2,
        device: str = "auto",
        *,
        threads: int | None = None,
    ) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, but got {chunk}")
        self.chunk = chunk
        self.initialized_ray = join(address)
        self.actors: list[ActorHandle] = []
        try:
            self.plan = plan_actors(workers, *cluster_shape(), device=device, threads=threads)
            # Put once: every actor reads this one copy. Held for the executor's life, because Ray
            # frees an object nobody references, and a restarting actor reads its arguments again
            # (Ray logs a warning about exactly this at actor creation: holding the reference answers it).
            self.factory_ref = ray.put(factory)
            self.actors = [self._start_actor(self.factory_ref) for _ in range(workers)]
            self.nodes = self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.usable = set(range(workers))  # actors not known to be dead or restarting
        self.probes: dict[ray.ObjectRef, int] = {}  # `ready` calls to lost actors, answered once restarted
        self.chunks_scored = [0] * workers  # per actor, to see the load spread (and that restarted actors work again)
        self.chunks_lost = 0  # chunks resubmitted because their actor died

    def _start_actor(self, factory_ref: ray.ObjectRef) -> ActorHandle:
        plan = self.plan
        actor: ActorHandle = RemoteScoringActor.options(
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # lost chunks are resubmitted here, to whichever actor is free, not queued behind a restart
        ).remote(factory_ref, plan.threads, plan.device)
        return actor

    def _wait_ready(self) -> list[str]:
        """Every actor's node, once all scorers are built; a clear error if they cannot be placed or built."""
        refs: list[ray.ObjectRef] = [actor.ready.remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if len(ready) < len(refs):
            raise RuntimeError(
                f"only {len(ready)} of {len(refs)} Ray actors were ready after {READY_TIMEOUT_S:.0f} s "
                f"(each needs {self.plan.num_cpus} CPU and {self.plan.num_gpus} GPU; cluster: {ray.cluster_resources()})"
            )
        return ray.get(refs)

    # -- scoring --------------------------------------------------------------------------------
    def score(self, tasks: list[Task]) -> Iterator[Scored]:
        """Yield each task's result exactly once, as each chunk completes."""
        if not self.actors:
            raise RuntimeError("this RayExecutor is closed")
        round_ = Round(tasks, self.chunk)
        try:
            while not round_.finished():
                self._dispatch(round_)
                for ref in self._wait(round_):
                    yield from self._collect(round_, ref)
        finally:
            for ref in round_.running if ray.is_initialized() else []:
                ray.cancel(ref)  # the caller stopped early: drop chunks still queued on the actors

    def _dispatch(self, round_: Round) -> None:
        """Top up every usable actor to IN_FLIGHT_PER_ACTOR chunks, least loaded first."""
        while round_.waiting and self.usable:
            actor = min(self.usable, key=round_.load)
            if round_.load(actor) >= IN_FLIGHT_PER_ACTOR:
                return
            chunk = round_.waiting.popleft()
            round_.running[self.actors[actor].score_chunk.remote(chunk.tasks)] = (actor, chunk)

    def _wait(self, round_: Round) -> list[ray.ObjectRef]:
        """The next answered probe or finished chunk, waiting at most STALL_TIMEOUT_S. Probes first:
        `ray.wait` returns ready refs in the order given, so behind a stream of finished chunks a
        restarted actor's answer would wait for the round's end and the actor get no work."""
        refs = [*self.probes, *round_.running]
        if not refs:
            raise RuntimeError(f"all {len(self.actors)} Ray actors died and Ray gave up restarting them")
        ready, _ = ray.wait(refs, num_returns=1, timeout=STALL_TIMEOUT_S)
        if not ready:
            running = sorted(slot for _, chunk in round_.running.values() for slot in chunk.slots())
            raise RuntimeError(f"no Ray actor finished a chunk or came back in {STALL_TIMEOUT_S:.0f} s; slots running {running}")
        return ready

    def _collect(self, round_: Round, ref: ray.ObjectRef) -> Iterator[Scored]:
        if ref in self.probes:
            self._probe_answered(ref)
            return
        actor, chunk = round_.running.pop(ref)
        try:
            result: ChunkResult = ray.get(ref)
        except RayActorError as error:  # the actor died or became unreachable mid-chunk
            self._lost(actor)
            self.chunks_lost += 1
            round_.requeue(chunk, error)
            return
        self.chunks_scored[actor] += 1
        yield from round_.results(chunk, result)

    # -- lost actors ----------------------------------------------------------------------------
    def _lost(self, actor: int) -> None:
        """Stop sending to `actor` and probe it; the probe answers once Ray has restarted it."""
        if actor in self.usable:
            self.usable.discard(actor)
            # A call to a restarting actor can fail at once ("the actor is restarting"); retried by Ray,
            # the probe waits for the restart instead, and fails only when Ray gives up on the actor.
            self.probes[self.actors[actor].ready.options(max_task_retries=-1).remote()] = actor

    def _probe_answered(self, ref: ray.ObjectRef) -> None:
        actor = self.probes.pop(ref)
        try:
            ray.get(ref)
        except RayActorError:
            return  # restarts exhausted, or its scorer failed to build: the others carry on without it
        self.usable.add(actor)

    def report(self) -> dict[str, object]:
        """The nodes the actors started on (one entry per node), and chunks resubmitted after a loss."""
        return {"nodes": sorted(set(self.nodes)), "chunks_scored": list(self.chunks_scored), "chunks_lost": self.chunks_lost}

    # -- shutdown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill the actors; disconnect from Ray (stopping it if local) if this executor connected."""
        for actor in self.actors if ray.is_initialized() else []:
            ray.kill(actor)
        self.actors = []
        if self.initialized_ray and ray.is_initialized():
            ray.shutdown()
        self.initialized_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
