"""search: the chosen searcher under the FLOPs (and latency) budget; candidates scored by the trained
PruningNet in this process or on Ray actors; every result lands in the study as it arrives."""

from __future__ import annotations

import dataclasses
import os

from metaprune.choice import require_pruningnet, scorer_spec
from metaprune.context import Context
from metaprune.errors import UserError
from metaprune.graph_latency import GraphLatencyTable, build_graph_latency_table
from metaprune.io import atomic_write_bytes
from metaprune.latency import lut_accuracy, table_file_name
from metaprune.results import BestCandidate, CheckedConfig, FrontPoint, LatencyReport, SearchResult, SearchTiming, TableCheck
from metaprune.run_dir import FRONT_PLOT
from metaprune.score import ScorerSpec
from metaprune.studies import guard, open_study, rank
from nas.evolution import EvolutionConfig
from nas.executors import Executor, InProcessExecutor, JoinError, LazyExecutor, unreachable
from nas.search import SearchOutcome, drive_search
from nas.searchers import make_searcher
from nas.storage import redact
from nas.study import Candidate, StudyRecord, pareto_front


def run(ctx: Context) -> SearchResult:
    require_pruningnet(ctx)
    spec = scorer_spec(ctx)  # fails on an unfit PruningNet before anything is written
    check_ray_address(ctx)
    ctx.begin()
    search = ctx.cfg.search
    table = latency_table(ctx) if search.max_latency_ms > 0 else None
    record, outcome, pool = _search(ctx, spec, table)
    best = min(outcome.candidates, key=rank)
    front = pareto_front(outcome.candidates)
    from nas.plot import front_png  # imports matplotlib: only here

    png = front_png(outcome.candidates, front, ctx.search_window[1], ctx.full.flops, title=record.name)
    atomic_write_bytes(ctx.dir / FRONT_PLOT, png)
    summary = SearchResult(
        searcher=search.searcher,
        study=record.name,
        storage=redact(record.storage.location),
        executor=search.executor if search.executor == "inprocess" else f"ray x{search.workers}",
        pool=pool,  # where this run's candidates were scored (no nodes when all came from the study)
        evaluated=len(outcome.candidates),
        trials=outcome.trials,
        scored_this_run=outcome.scored_now,
        budget_flops=ctx.search_window[1],
        best=candidate_summary(ctx, best),
        pareto=[point(c) for c in front],
        plot=FRONT_PLOT,
        timing=timing(outcome),
        latency=None if table is None else latency_report(ctx, table, best, front),
    )
    _record_winner(ctx, record.name, best, summary)
    return summary


def _search(
    ctx: Context, spec: ScorerSpec, table: GraphLatencyTable | None
) -> tuple[StudyRecord, SearchOutcome, dict[str, object]]:
    """The searcher driven to its end over the run's study; the pool's report once it is closed."""
    search = ctx.cfg.search
    feasible = None if table is None else lambda config: table.predict(config) <= search.max_latency_ms
    try:
        config = searcher_config(ctx)
        searcher = make_searcher(search.searcher, ctx.space, config, ctx.search_window, search.rounds.batch, feasible)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    record = open_study(ctx, True, searcher.directions, table.predict if table else None)  # may cut a torn tail
    executor = LazyExecutor(lambda: make_executor(ctx, spec))  # nothing to score: no Ray started
    try:
        total = search.population * search.generations
        outcome = guard(ctx, lambda: drive_search(searcher, record, executor, total, ctx.cfg.progress))
    finally:
        executor.close()
    if not outcome.candidates:
        raise UserError("the search scored no candidate inside the window; widen it (search.max_flops) or run more trials")
    return record, outcome, executor.report()


def timing(outcome: SearchOutcome) -> SearchTiming:
    share = outcome.driver_seconds / max(outcome.scoring_seconds, 1e-9)
    return SearchTiming(
        driver_s=round(outcome.driver_seconds, 3),
        scoring_s=round(outcome.scoring_seconds, 3),
        driver_share=round(share, 4) if outcome.scored_now else None,
    )


def _record_winner(ctx: Context, study: str, best: Candidate, summary: SearchResult) -> None:
    """The search's best is the winner, unless a top-k fine-tune of this same study chose its survivor."""
    previous = ctx.store.winner()
    keep = previous["config"] if previous and previous["study"] == study and previous["by"] == "tune" else None
    if keep is None:
        ctx.store.set_winner(study, best.config, "search")
    else:
        ctx.store.set_winner(study, tuple(keep), "tune")
    ctx.store.report("search", summary, winner=best.config, also=keep)


def searcher_config(ctx: Context) -> EvolutionConfig:
    """The budget (population x generations, seed) with the evolution section, as nas's searchers take it."""
    search = ctx.cfg.search
    evo = dataclasses.asdict(search.evolution)
    return EvolutionConfig(population=search.population, generations=search.generations, seed=search.seed, **evo)


def make_executor(ctx: Context, spec: ScorerSpec) -> Executor:
    search = ctx.cfg.search
    if search.executor == "inprocess":
        return InProcessExecutor(spec, str(ctx.device))
    from nas.ray_executor import RayExecutor  # Ray is imported only when asked for

    try:
        return RayExecutor(spec, search.workers, search.ray_address or None, device=ctx.cfg.device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except ConnectionError as exc:  # JoinError says why; any other is Ray's own
        raise UserError(str(exc) if isinstance(exc, JoinError) else f"cannot join the Ray cluster: {exc}") from None


def check_ray_address(ctx: Context) -> None:
    """Fail before anything is written: the head must answer, accept our token and run our versions."""
    address = ctx.cfg.search.ray_address or os.environ.get("RAY_ADDRESS", "")
    if ctx.cfg.search.executor != "ray" or address in ("", "auto", "local") or address.startswith("ray://"):
        return
    source = "--ray-address" if ctx.cfg.search.ray_address else "RAY_ADDRESS"
    if problem := unreachable(address):
        raise UserError(
            f"cannot reach the Ray cluster at {source} {address!r}: {problem}; "
            "check the address (the head's `ray start --head` prints it) or leave it empty to start Ray here"
        )
    from nas.ray_cluster import check_cluster  # imports Ray: only for a search that asks for it

    try:
        check_cluster(address)
    except JoinError as exc:
        raise UserError(str(exc)) from None


def latency_table(ctx: Context) -> GraphLatencyTable:
    """The per-layer latency table of this space on this machine (measured once, kept in the run dir)."""
    cfg, space = ctx.cfg.latency, ctx.space
    path = ctx.dir / table_file_name(cfg.batch, cfg.threads, ctx.device_kind)
    if path.exists():
        return GraphLatencyTable.load(path, space, cfg.batch, cfg.threads, device=ctx.device_kind)
    table = build_graph_latency_table(
        space, cfg.batch, cfg.threads, ctx.device_kind, cfg.warmup, cfg.runs, progress=ctx.cfg.progress
    )
    table.save(path)
    return table


def latency_report(ctx: Context, table: GraphLatencyTable, best: Candidate, front: list[Candidate]) -> LatencyReport:
    """The budget, the winner's predicted latency, and the table checked against measured whole subnets."""
    checked = [c.config for c in front[:: max(1, len(front) // 5)]][:5]  # up to 5 points spread along the front
    check = lut_accuracy(table.space, table, checked, runs=ctx.cfg.latency.runs, device=ctx.device_kind)
    return LatencyReport(
        max_latency_ms=ctx.cfg.search.max_latency_ms,
        batch=table.batch,
        threads=table.threads,
        device=table.device,
        best_predicted_ms=table.predict(best.config),
        table_check=TableCheck(
            mape_pct=check["mape_pct"],
            max_error_pct=check["max_error_pct"],
            kendall_tau=check["kendall_tau"],
            configs=[CheckedConfig(**row) for row in check["configs"]],
        ),
    )


def point(candidate: Candidate) -> FrontPoint:
    return FrontPoint(
        trial=candidate.trial,
        config=list(candidate.config),
        flops=candidate.flops,
        params=candidate.params,
        proxy_top1=candidate.proxy_top1,
    )


def candidate_summary(ctx: Context, best: Candidate) -> BestCandidate:
    return BestCandidate(
        trial=best.trial,
        config=list(best.config),
        channels=ctx.space.describe(best.config),
        flops=best.flops,
        flops_ratio=best.flops / ctx.full.flops,
        params=best.params,
        proxy_top1=best.proxy_top1,
    )
