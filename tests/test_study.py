"""The study record: Optuna's journal format written once per result, torn tails, settings, the front."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection

import search_spaces as ss
from nas.storage import JournalFile, Storage
from nas.study import Candidate, MetaMismatch, StudyRecord, pareto_front

SPACE = ss.create_space("resnet20", num_classes=4, in_channels=3, resolution=16, width_mult=0.5)
FULL = ss.flops(SPACE, SPACE.largest)


def record(run_dir: Path, meta: dict | None = None, name: str = "evolution-x", window: float = 0.5) -> StudyRecord:
    return StudyRecord(
        Storage("", run_dir), name, "", SPACE, meta or {"score": 1}, [StudyDirection.MAXIMIZE], {}, (0.0, window * FULL)
    )


def configs(count: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = __import__("numpy").random.default_rng(seed)
    return [ss.sample_within(SPACE, rng, 0, 0.5 * FULL) for _ in range(count)]


def test_journal_is_optunas_format_with_one_append_per_result(tmp_path: Path) -> None:
    study = record(tmp_path)
    writes = []
    original = study.storage.journal.flush  # type: ignore[union-attr]
    study.storage.journal.flush = lambda: (writes.append(len(study.storage.journal.pending)), original())  # type: ignore
    for index, config in enumerate(configs(3)):
        pending = study.ask_config(config)
        study.tell_scored(pending, 10.0 * index, "node-a")
    assert len(writes) == 3 and all(w > 3 for w in writes)  # each result: its whole trial in one append
    # Optuna's own reader (as optuna-dashboard uses) sees the same trials
    theirs = optuna.load_study(
        study_name="evolution-x", storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    )
    ours = study.trials()
    assert [t.params for t in theirs.trials] == [t.params for t in ours]
    assert [t.values for t in theirs.trials] == [[0.0], [10.0], [20.0]]
    assert {t.user_attrs["status"] for t in theirs.trials} == {"scored"}
    assert all(t.constraints["flops_over_budget"] <= 0 for t in theirs.trials)


def test_torn_tail_is_cut_and_a_damaged_middle_refused(tmp_path: Path) -> None:
    study = record(tmp_path)
    for config in configs(2):
        study.tell_scored(study.ask_config(config), 50.0, "n")
    path = tmp_path / "study.journal"
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"op_code":4,"worker_id":"x","trial_id":')  # a kill mid-write
    again = record(tmp_path)
    assert len(again.candidates()) == 2 and path.read_bytes() == intact
    lines = intact.split(b"\n")
    lines[3] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 4 .* is damaged"):
        JournalFile(path)


def test_other_settings_are_refused_and_scores_shared_between_studies(tmp_path: Path) -> None:
    first = record(tmp_path)
    config = configs(1)[0]
    first.tell_scored(first.ask_config(config), 42.0, "n")
    with pytest.raises(MetaMismatch, match="other settings"):
        record(tmp_path, meta={"score": 2}, name="tpe-y")
    second = record(tmp_path, name="tpe-y", window=0.9)  # another searcher/budget: the score is reused
    pending = second.ask_config(config)
    assert pending.known is not None and pending.known.proxy_top1 == 42.0 and pending.known.study == "evolution-x"
    reused = second.tell_known(pending)
    assert reused.proxy_top1 == 42.0 and second.trials()[0].user_attrs["reused_from"] == "evolution-x#0"


def test_a_stale_running_trial_is_taken_up_again_not_duplicated(tmp_path: Path) -> None:
    study = record(tmp_path)
    a, b = configs(2)
    study.tell_scored(study.ask_config(a), 30.0, "n")
    study.ask_config(b)  # asked, then the driver dies before telling it
    study.storage.journal.flush()  # type: ignore[union-attr]
    resumed = record(tmp_path)
    assert [t.number for t in resumed.stale()] == [1]
    done, stale = resumed.ask_config(a), resumed.ask_config(b)
    assert done.trial is None and done.known is not None and done.known.proxy_top1 == 30.0
    assert stale.trial is not None and stale.trial.number == 1
    resumed.tell_scored(stale, 31.0, "n")
    assert len(resumed.trials()) == 2 and not resumed.stale()


def brute_force_front(candidates: list[Candidate]) -> set[int]:
    def dominated(c: Candidate) -> bool:
        return any(
            o.flops <= c.flops and o.proxy_top1 >= c.proxy_top1 and (o.flops < c.flops or o.proxy_top1 > c.proxy_top1)
            for o in candidates
        )

    return {c.trial for c in candidates if not dominated(c)}


def test_pareto_front_is_exactly_the_non_dominated_set() -> None:
    rng = random.Random(0)
    for _ in range(50):
        candidates = [
            Candidate(i, (i,), rng.randrange(1, 30), 1, float(rng.randrange(0, 20))) for i in range(rng.randrange(1, 40))
        ]
        front = pareto_front(candidates)
        expected = brute_force_front(candidates)
        # equal points: the front keeps one of each (the earliest trial)
        assert {(c.flops, c.proxy_top1) for c in front} == {(c.flops, c.proxy_top1) for c in candidates if c.trial in expected}
        assert [c.flops for c in front] == sorted(c.flops for c in front)


def test_asks_cut_short_are_failed_not_mixed_up(tmp_path: Path) -> None:
    study = record(tmp_path)
    a, b, c = configs(3)
    study.tell_scored(study.ask_config(a), 30.0, "n")
    half = study.study.ask()  # a RUNNING trial holding one gene only: its other writes never landed
    half.suggest_int(SPACE.genes[0].name, 0, len(SPACE.genes[0].choices) - 1)
    study.study.enqueue_trial(dict(zip(study.distributions, b)))  # a WAITING trial (an ask cut short)
    study.storage.journal.flush()  # type: ignore[union-attr]
    resumed = record(tmp_path)
    states = [t.state.name for t in resumed.trials()]
    assert states == ["COMPLETE", "FAIL", "FAIL"] and not resumed.stale()
    for config, score in ((b, 40.0), (c, 50.0)):  # later asks get their own configurations and scores
        pending = resumed.ask_config(config)
        assert pending.config == config and pending.known is None
        resumed.tell_scored(pending, score, "n")
    told = {tuple(t.params.values()): t.values[0] for t in resumed.trials() if t.state.name == "COMPLETE"}
    assert told == {a: 30.0, b: 40.0, c: 50.0}
