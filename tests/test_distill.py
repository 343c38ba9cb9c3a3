"""Knowledge distillation: the loss against its formula, its temperature limits, and the pipeline's teachers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import search_spaces as ss
from metaprune.distill import distillation_loss, from_program, soft_targets, to_program
from metaprune.train import checkpoint_header
from tests.conftest import cli, counted_top1, finetuned_top1


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_loss_equals_the_formula_on_hand_computed_logits() -> None:
    student = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    teacher = [[1.0, 2.0, 0.0], [-1.0, 0.5, 2.5]]
    labels = [0, 2]
    alpha, t = 0.7, 3.0
    expected = 0.0
    for s, q_logits, y in zip(student, teacher, labels):
        ce = -math.log(_softmax(s, 1.0)[y])
        q, p = _softmax(q_logits, t), _softmax(s, t)
        kl = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))
        expected += (ce + alpha * t * t * kl) / len(labels)
    got = distillation_loss(torch.tensor(student), torch.tensor(labels), [torch.tensor(teacher)], alpha, t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    plain = distillation_loss(torch.tensor(student), torch.tensor(labels), [torch.tensor(teacher)], 0.0, t)
    assert plain.item() == pytest.approx(sum(-math.log(_softmax(s, 1)[y]) for s, y in zip(student, labels)) / 2, rel=1e-6)


def test_temperature_limits_and_teacher_averaging() -> None:
    logits = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    assert torch.allclose(soft_targets([logits], 1e4), torch.full((1, 4), 0.25), atol=1e-4)  # large T: uniform
    assert torch.equal(soft_targets([logits], 1e-3), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # T -> 0: one-hot argmax
    assert torch.allclose(soft_targets([logits], 1.0), torch.softmax(logits, 1))  # T = 1: the plain softmax
    other = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    mixed = soft_targets([logits, other], 2.0, [3.0, 1.0])
    assert torch.allclose(mixed, 0.75 * torch.softmax(logits / 2, 1) + 0.25 * torch.softmax(other / 2, 1))
    # a student equal to its teacher pays no soft term, whatever T
    y = torch.tensor([1])
    for t in (0.5, 1.0, 8.0):
        assert distillation_loss(logits, y, [logits], 5.0, t).item() == pytest.approx(
            torch.nn.functional.cross_entropy(logits, y).item(), abs=1e-6
        )


def test_soft_term_teaches_the_teachers_decisions() -> None:
    """A student trained on the soft term alone (labels that are pure noise) learns to agree with its teacher."""
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    x = torch.randn(512, 8)
    noise = torch.randint(0, 5, (512,))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.2)
    before = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean()
    for _ in range(300):
        loss = distillation_loss(student(x), noise, [teacher(x).detach()], 1.0, 2.0) - torch.nn.functional.cross_entropy(
            student(x), noise
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean()
    assert before < 0.5 and after > 0.95


def test_teacher_ships_as_a_program_with_any_batch() -> None:
    import search_spaces as ss

    space = ss.create_space("resnet20", 4, 3, 8, 0.25)
    model = ss.build_subnet(space, space.largest).eval()
    loaded = from_program(to_program(model, torch.randn(2, 3, 8, 8)))
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_stages_distill_from_the_base_then_from_user_teachers_and_an_assistant(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for stage in ("train-base", "search", "finetune", "export"):  # the winner is distilled from the base network
        result = cli(stage, run_dir=run, inprocess=True)
        assert result.returncode == 0, result.stderr
    summary = _summary(run)
    distill = summary["distill"]
    assert distill["teachers"] == ["base"] and distill["teacher_top1"] == summary["base"]["top1"]
    arch = json.loads((run / "export" / "architecture.json").read_text())
    space = ss.space_from_payload({"graph": arch["recipe"], "order": arch["order"]})
    norm = (arch["input"]["mean"], arch["input"]["std"])
    base = ss.build_subnet(space, space.largest)
    base.load_state_dict(torch.load(run / "base.pt", weights_only=True)["model"])
    assert summary["base"]["top1"] == counted_top1(base, *norm)  # the teacher's figure, counted here
    assert distill["config"] == summary["finetune"]["config"] == summary["export"]["config"]
    # the student's test top-1 (written to finetune and distill), counted here from its checkpoint
    assert summary["finetune"]["top1"] == distill["top1"] == finetuned_top1(run)
    checkpoint = run / summary["finetune"]["checkpoint"]
    assert checkpoint_header(checkpoint)["meta"]["distill"]["alpha"] == 1.0

    # two user teachers (exported subnets), weighted: a new fine-tune, the old one is kept
    teacher = str(run / "export")
    sets = [f"distill.teacher={teacher},{teacher}", "distill.teacher_weights=0.25,0.75"]
    result = cli("finetune", run_dir=run, sets=sets, inprocess=True)
    assert result.returncode == 0, result.stderr
    summary = _summary(run)
    assert summary["distill"]["teachers"] == [teacher, teacher]
    assert summary["distill"]["teacher_top1"] == [counted_top1(ss.load_subnet(teacher), *norm)] * 2
    assert checkpoint.exists() and run / summary["finetune"]["checkpoint"] != checkpoint

    # the teacher-assistant chain: full -> half width -> winner
    result = cli("finetune", run_dir=run, sets=["distill.assistant_width=0.5"], inprocess=True)
    assert result.returncode == 0, result.stderr
    summary = _summary(run)
    assert summary["distill"]["teachers"] == ["assistant"] and summary["distill"]["assistant"]["width"] == 0.5
    assert len(list((run / "distill").glob("assistant-*.pt"))) == 1


def test_bad_teacher_settings_are_one_line_errors(tmp_path: Path) -> None:
    for sets, words in (
        (["distill.teacher=/no/such/model"], "does not exist"),
        (["distill.temperature=0"], "distill.temperature"),
        (["distill.teacher_weights=1,2"], "one per teacher"),
        (["distill.assistant_width=1.5"], "distill.assistant_width"),
    ):
        result = cli("finetune", run_dir=tmp_path / "run", sets=sets, inprocess=True)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    result = cli("finetune", run_dir=tmp_path / "fresh", inprocess=True)
    assert result.returncode == 2 and "no finished" in result.stderr
