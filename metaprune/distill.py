"""Knowledge distillation: the pruned network learns from the original one (or several).

    loss = CE(p, y) + alpha * T^2 * KL(q_T || p_T),   q_T = sum_i w_i softmax(z_teacher_i / T),
                                                      p_T = softmax(z_student / T)

T scales both softmaxes: large T flattens the teacher's target towards uniform, T -> 0 sharpens it
to the teacher's one-hot argmax, T = 1 is the plain softmax. T^2 keeps the soft term's gradient on
the same scale as the hard term's whatever T is (Hinton et al., 2015). Several teachers are averaged
in probability space (weights normalised to sum to 1). A teacher-assistant chain (full -> medium ->
winner) is two distillations in a row; the pipeline builds it from these pieces.

A teacher is the original full network (the pipeline's `train-base` stage), an exported subnet
directory (architecture.json + weights.pt), or any model saved with `torch.export.save` (.pt2),
e.g. a torchvision model a user exported (in eval mode, with a dynamic batch dimension); it
receives the same normalised images as the student.
"""

from __future__ import annotations

import io
import itertools
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.export import ExportedProgram
from torch.export.passes import move_to_device_pass

from metaprune.errors import UserError

# The saved program behind each teacher module made from one (`from_program`, `load_teacher`):
# `move_to_device` and `to_program` start again from it. Weak keys: a dropped teacher drops its bytes.
_programs: weakref.WeakKeyDictionary[nn.Module, bytes] = weakref.WeakKeyDictionary()


@dataclass
class DistillConfig:
    teacher: str = "base"  # base (the full network, trained by train-base) | none | comma-separated exported dirs or .pt2 files
    teacher_weights: str = ""  # comma-separated weights of several teachers' soft targets (empty: equal)
    alpha: float = 1.0  # weight of the soft (teacher) term; 0 turns distillation off
    temperature: float = 4.0  # T: large flattens the teacher's target, near 0 makes it one-hot, 1 is the plain softmax
    assistant_width: float = 0.0  # > 0: teacher-assistant chain full -> assistant -> winner, the assistant every width x this

    @property
    def enabled(self) -> bool:
        return self.teacher != "none" and self.alpha > 0


def soft_targets(
    teacher_logits: Sequence[torch.Tensor], temperature: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """The teachers' softened class probabilities, averaged with `weights` (equal by default)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    weights = [1.0] * len(teacher_logits) if weights is None else list(weights)
    if len(weights) != len(teacher_logits) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"teacher weights must be {len(teacher_logits)} non-negative numbers, not all 0; got {weights}")
    total = sum(weights)
    return sum(w / total * F.softmax(z.float() / temperature, dim=1) for w, z in zip(weights, teacher_logits))  # type: ignore[return-value]


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor],
    alpha: float,
    temperature: float,
    weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE(p, y) + alpha * T^2 * KL(q_T || p_T), averaged over the batch."""
    hard = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    q = soft_targets(teacher_logits, temperature, weights)
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    soft = F.kl_div(log_p, q, reduction="batchmean")  # sum_c q log(q / p), 0 log 0 taken as 0
    return hard + alpha * temperature**2 * soft


class DistillLoss:
    """The training loop's loss with teachers: computes the teachers' logits on the same batch."""

    def __init__(
        self, teachers: list[nn.Module], cfg: DistillConfig, weights: list[float] | None, label_smoothing: float
    ) -> None:
        self.teachers, self.cfg, self.weights, self.label_smoothing = teachers, cfg, weights, label_smoothing
        for teacher in teachers:
            freeze(teacher)

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = [teacher(x) for teacher in self.teachers]
        return distillation_loss(
            logits, y, teacher_logits, self.cfg.alpha, self.cfg.temperature, self.weights, self.label_smoothing
        )  # fmt: skip


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode (fixed BN statistics), no gradients. A torch.export program has no train mode to
    leave (its `eval()` raises): it runs as it was exported, which must be in eval mode."""
    if not isinstance(teacher, torch.fx.GraphModule):
        teacher.eval()
    return teacher.requires_grad_(False)


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def to_program(model: nn.Module, example: torch.Tensor) -> bytes:
    """A teacher as a CPU `torch.export` program with a dynamic batch dimension, to ship to workers.

    `model` is left as it was (the Tune path evaluates the run's teachers on their device after
    this): it is traced where its weights are, in eval mode for the trace only, and the program,
    not the model, is moved to the CPU. A teacher made from a program ships that program."""
    source = _programs.get(model)
    if source is not None:
        return _save(move_to_device_pass(torch.export.load(io.BytesIO(source)), "cpu"))
    first = _first_tensor(model)
    if first is not None:
        example = example.to(first.device, first.dtype if first.is_floating_point() else None)
    batch = torch.export.Dim("batch", min=1)
    training = model.training
    exported = isinstance(model, torch.fx.GraphModule)  # an exported module has no eval(): it runs as exported
    if not exported:
        model.eval()
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    finally:
        if not exported:
            model.train(training)
    return _save(move_to_device_pass(program, "cpu"))


def _save(program: ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def from_program(data: bytes, device: torch.device | str = "cpu") -> nn.Module:
    """The teacher that `to_program` (or `torch.export.save`) wrote, on `device`, frozen."""
    module = freeze(move_to_device_pass(torch.export.load(io.BytesIO(data)), device).module())
    _programs[module] = data
    return module


def move_to_device(teacher: nn.Module | ExportedProgram, device: torch.device | str) -> nn.Module:
    """A loaded teacher on `device`, frozen.

    A plain nn.Module moves with `.to(device)` (in place, as `.to` does). A torch.export program,
    or a module that `from_program` / `load_teacher` made of one, goes through torch's
    `move_to_device_pass` and comes back as a new module (the argument is left as it was):
    `.to()` on an exported module moves its weights but not the devices traced into its graph (a
    `torch.ones(n, device=x.device)` in the original forward is `aten.ones(device='cpu')` in the
    program), so the moved module fails at its first call."""
    if isinstance(teacher, ExportedProgram):
        return from_program(_save(teacher), device)
    source = _programs.get(teacher)
    if source is not None:
        return from_program(source, device)
    return freeze(teacher.to(device))


def parse_weights(text: str, teachers: int) -> list[float] | None:
    """`teacher_weights` as numbers, one per teacher (None: equal weights)."""
    if not text.strip():
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"distill.teacher_weights {text!r} must be comma-separated numbers, e.g. 0.7,0.3") from None
    if len(weights) != teachers or min(weights) < 0 or sum(weights) <= 0 or not all(map(math.isfinite, weights)):
        raise UserError(
            f"distill.teacher_weights {text!r} must give {teachers} non-negative numbers (one per teacher), not all 0"
        )
    return weights


def teacher_paths(cfg: DistillConfig) -> list[Path]:
    """The user's teachers (empty for `base` and `none`), each checked to exist."""
    if cfg.teacher in ("base", "none"):
        return []
    paths = [Path(part.strip()) for part in cfg.teacher.split(",") if part.strip()]
    for path in paths:
        if not path.exists():
            raise UserError(
                f"distill.teacher {str(path)!r} does not exist; give an exported subnet directory, a .pt2 file, base or none"
            )
    return paths


def load_teacher(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """An exported subnet directory or a `torch.export` program (.pt2), on `device`, frozen."""
    try:
        if path.is_dir():
            from search_spaces import load_subnet

            return move_to_device(load_subnet(path), device)
        return from_program(path.read_bytes(), device)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"distill.teacher {str(path)!r} cannot be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); "
            "give a directory with architecture.json + weights.pt or a file written by torch.export.save"
        ) from None
