"""Every searcher through the command line, on a trained PruningNet: budgets, the record, the front."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import search_spaces as ss
from metaprune.graph_latency import GraphLatencyTable
from tests.conftest import cli, finetuned_top1, scored_configs, study_trials
from tests.test_cli import assert_clean_error
from tests.test_latency import assert_report_adds_up

BUDGET = 0.3


@pytest.fixture(scope="module")
def searched(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run directory per searcher, each searched at 30% of the FLOPs."""
    runs = {}
    for searcher in ("evolution", "tpe", "nsga2", "random"):
        run_dir = tmp_path_factory.mktemp(searcher) / "run"
        shutil.copytree(trained_run, run_dir)
        result = cli("search", "--searcher", searcher, run_dir=run_dir, sets=[f"search.max_flops={BUDGET}"], inprocess=True)
        assert result.returncode == 0, result.stderr
        runs[searcher] = run_dir
    return runs


@pytest.mark.parametrize("searcher", ["evolution", "tpe", "nsga2", "random"])
def test_searcher_respects_the_budget_and_records_every_trial(searched: dict[str, Path], searcher: str) -> None:
    run_dir = searched[searcher]
    summary = json.loads((run_dir / "summary.json").read_text())
    search, full = summary["search"], summary["base"]["flops"]
    budget = BUDGET * full
    assert search["searcher"] == searcher and search["budget_flops"] == pytest.approx(budget)
    assert search["best"]["flops"] <= budget and all(point["flops"] <= budget for point in search["pareto"])
    trials = study_trials(run_dir)
    assert len(trials) == search["trials"] == 8 * 3  # population x generations
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), "a trial was left RUNNING"
    for trial in trials:
        feasible = trial.user_attrs["flops"] <= budget
        assert trial.user_attrs["status"] == ("scored" if feasible else "infeasible")
        assert (trial.constraints["flops_over_budget"] <= 0) == feasible
    scored = [t for t in trials if t.user_attrs["status"] == "scored"]
    assert len(scored) == search["evaluated"] == search["scored_this_run"] > 0
    assert len({tuple(t.params.values()) for t in scored}) == len(scored), "a configuration was scored twice"
    best = max(scored, key=lambda t: (t.values[0], -t.user_attrs["flops"], -t.number))
    assert search["best"]["trial"] == best.number and search["best"]["proxy_top1"] == best.values[0]
    assert (run_dir / "search_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nsga2_front_is_non_dominated_and_matches_optuna(searched: dict[str, Path]) -> None:
    run_dir = searched["nsga2"]
    front = json.loads((run_dir / "summary.json").read_text())["search"]["pareto"]
    points = [(p["flops"], p["proxy_top1"]) for p in front]
    assert points == sorted(points) and all(b[1] > a[1] for a, b in zip(points, points[1:])), points
    scored = [t for t in study_trials(run_dir) if t.user_attrs["status"] == "scored"]
    for trial in scored:  # every scored candidate is on the front or dominated by a point of it
        flops, top1 = trial.user_attrs["flops"], trial.values[0]
        assert any(f <= flops and p >= top1 for f, p in points)
    # Optuna's own answer: best_trials of the constrained two-objective study, feasible only
    summary = json.loads((run_dir / "summary.json").read_text())["search"]
    study = optuna.load_study(
        study_name=summary["study"], storage=JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    )
    assert {(t.values[1], t.values[0]) for t in study.best_trials} == set(points)


def test_scores_are_shared_across_searchers_and_budgets(searched: dict[str, Path]) -> None:
    run_dir = searched["evolution"]
    before = scored_configs(run_dir)
    result = cli("search", "--searcher", "random", run_dir=run_dir, sets=[f"search.max_flops={BUDGET}"])
    assert result.returncode == 0, result.stderr
    after = scored_configs(run_dir)
    assert len(after) == len(set(after)), "a configuration scored by evolution was scored again by random"
    reused = [t for t in study_trials(run_dir) if t.user_attrs["status"] == "reused"]
    summary = json.loads((run_dir / "summary.json").read_text())["search"]
    assert summary["scored_this_run"] == len(after) - len(before) == summary["evaluated"] - len(reused)


def test_any_point_of_the_front_exports_without_searching_again(searched: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(searched["nsga2"], run_dir)
    sets, flags = [f"search.max_flops={BUDGET}"], ["--searcher", "nsga2"]
    summary = json.loads((run_dir / "summary.json").read_text())
    front = summary["search"]["pareto"]
    smallest = front[0]
    result = cli("export", *flags, "--trial", str(smallest["trial"]), run_dir=run_dir, sets=sets)
    assert result.returncode == 0, result.stderr
    out = run_dir / "export" / f"trial-{smallest['trial']}"
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["flops"] == smallest["flops"] and ss.load_subnet(out) is not None
    exported = json.loads((run_dir / "summary.json").read_text())["exports"][out.name]
    assert exported["weights"] == "generated" and exported["config"] == smallest["config"]

    cap = (smallest["flops"] + front[-1]["flops"]) / 2  # absolute FLOPs: the best front point under it
    expected = max((p for p in front if p["flops"] <= cap), key=lambda p: p["proxy_top1"])
    result = cli("export", *flags, "--max-flops", f"{cap:.0f}", run_dir=run_dir, sets=sets)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "export" / f"trial-{expected['trial']}" / "weights.pt").exists()
    assert json.loads((run_dir / "summary.json").read_text())["search"] == summary["search"], "export searched again"

    for argv, fragments in [
        (["export", *flags, "--trial", "9999"], ["--trial 9999", "pareto"]),
        (["export", *flags, "--max-flops", "10"], ["--max-flops", "raise it"]),
        (["search", "--trial", "1"], ["--trial", "finetune, quantize or export"]),
    ]:
        assert_clean_error(cli(*argv, run_dir=run_dir, sets=sets, inprocess=True), *fragments)


def test_a_database_storage_url_holds_the_studies_of_several_runs(trained_run: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for name in ("first", "second"):
        run_dir = tmp_path / name
        shutil.copytree(trained_run, run_dir)
        result = cli("search", "--storage", url, run_dir=run_dir, sets=[f"name={name}", "search.generations=2"], inprocess=True)
        assert result.returncode == 0, result.stderr
        assert not (run_dir / "study.journal").exists()
        summary = json.loads((run_dir / "summary.json").read_text())["search"]
        run_id = (run_dir / "run_id").read_text().strip()
        assert summary["study"] == f"{name}-{run_id}/" + summary["study"].split("/")[1] and summary["storage"] == url
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert [n.split("-")[0] for n in names] == ["first", "second"] and all("/evolution-" in n for n in names)
    trials = optuna.load_study(study_name=names[0], storage=url).trials
    assert len(trials) == 16 and {t.user_attrs["status"] for t in trials} == {"scored"}
    # export reads the study from the database too
    exported = cli("export", "--storage", url, "--trial", "3", run_dir=tmp_path / "first", sets=["name=first"], inprocess=True)
    assert exported.returncode == 0, exported.stderr
    arch = json.loads((tmp_path / "first" / "export" / "trial-3" / "architecture.json").read_text())
    space = ss.space_from_payload({"graph": arch["recipe"], "order": arch["order"]})
    assert space.from_channels(arch["config"]) == tuple(trials[3].params.values())  # the database's trial 3
    assert arch["flops"] == trials[3].user_attrs["flops"]


@pytest.mark.ray  # Ray Tune
def test_top_k_fine_tuned_under_asha_and_the_survivor_exported(searched: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(searched["evolution"], run_dir)
    sets = [f"search.max_flops={BUDGET}", "finetune.top_k=3", "finetune.epochs=2"]
    for stage in ("train-base", "finetune", "export"):  # every trial distils from the base network
        result = cli(stage, run_dir=run_dir, sets=sets, inprocess=True)
        assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    tuned = summary["finetune"]["tune"]
    ranked = sorted(study_trials(run_dir), key=lambda t: (-t.values[0], t.user_attrs["flops"], t.number))[:3]
    assert [t["name"] for t in tuned["trials"]] == [f"trial-{t.number}" for t in ranked]  # the 3 best proxies
    survivor = next(t for t in tuned["trials"] if t["name"] == tuned["survivor"])
    assert survivor["epochs"] == 2 and survivor["val_top1"] == max(t["val_top1"] for t in tuned["trials"] if t["epochs"] == 2)
    assert summary["export"]["config"] == summary["finetune"]["config"] == survivor["config"]
    assert summary["export"]["weights"] == "finetuned" and summary["export"]["reload_max_abs_diff"] == 0.0
    assert summary["distill"]["teachers"] == ["base"] and summary["distill"]["config"] == survivor["config"]
    # the student's test top-1 (written to finetune and distill), counted here from the survivor's checkpoint
    assert summary["finetune"]["top1"] == summary["distill"]["top1"] == finetuned_top1(run_dir)


@pytest.mark.parametrize("searcher", ["evolution", "tpe"])
def test_latency_budget_is_a_constraint_like_flops(trained_run: Path, tmp_path: Path, searcher: str) -> None:
    """search.max_latency_ms: priced by the per-layer table before scoring, like FLOPs; nothing over it is scored."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    sets = ["latency.runs=3", "latency.warmup=1", "search.max_latency_ms=1000"]  # first: a budget nothing exceeds
    assert cli("search", "--searcher", searcher, run_dir=run_dir, sets=sets, inprocess=True).returncode == 0
    (table_file,) = run_dir.glob("latency_table-b1-t1.json")
    predicted = sorted(t.user_attrs["latency_ms"] for t in study_trials(run_dir))
    cap = predicted[len(predicted) // 2]  # then the median: about half the proposals are over it
    sets[-1] = f"search.max_latency_ms={cap}"
    result = cli("search", "--searcher", searcher, run_dir=run_dir, sets=sets, inprocess=True)
    assert result.returncode == 0, result.stderr
    assert list(run_dir.glob("latency_table-*.json")) == [table_file]  # measured once, reused
    summary = json.loads((run_dir / "summary.json").read_text())["search"]
    assert summary["latency"]["max_latency_ms"] == cap and summary["latency"]["best_predicted_ms"] <= cap
    assert summary["latency"]["table_check"]["configs"]  # its figures, recomputed from the table on disk:
    space = ss.create_space("resnet20", 4, 3, 16, 0.5, channel_multiple=4)  # the run's: tests.conftest.FAST
    assert_report_adds_up(summary["latency"]["table_check"], GraphLatencyTable.load(table_file, space))
    trials = study_trials(run_dir)
    for trial in trials:
        ok = trial.user_attrs["latency_ms"] <= cap and trial.constraints["flops_over_budget"] <= 0
        assert (trial.constraints["latency_over_budget"] <= 0) == (trial.user_attrs["latency_ms"] <= cap)
        assert trial.user_attrs["status"] in (("scored", "reused") if ok else ("infeasible",))
    if searcher == "evolution":  # evolution never proposes what the table prices over the budget
        assert all(t.user_attrs["latency_ms"] <= cap for t in trials)
    else:  # TPE proposes freely and learns from the constraint
        assert any(t.user_attrs["status"] == "infeasible" for t in trials)
