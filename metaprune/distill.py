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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metaprune.errors import UserError


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


def to_program(model: nn.Module, example: torch.Tensor) -> bytes:
    """A teacher as a `torch.export` program with a dynamic batch dimension, to ship to workers."""
    import io

    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model.cpu().eval(), (example.cpu(),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def from_program(data: bytes) -> nn.Module:
    import io

    return freeze(torch.export.load(io.BytesIO(data)).module())


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


def load_teacher(path: Path) -> nn.Module:
    """An exported subnet directory or a `torch.export` program (.pt2), on the CPU in eval mode."""
    try:
        if path.is_dir():
            from search_spaces import load_subnet

            return freeze(load_subnet(path))
        program = torch.export.load(str(path))
        return freeze(program.module())
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"distill.teacher {str(path)!r} cannot be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}); "
            "give a directory with architecture.json + weights.pt or a file written by torch.export.save"
        ) from None
