"""Top-1 accuracy: the one counting loop behind every evaluation (PyTorch, ONNX Runtime, autocast).

Each caller only says how a batch becomes logits, so a score means the same thing wherever it was
measured: the search's proxy, the test top-1 of a PyTorch model, an ONNX file's, a bf16 run's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

X = TypeVar("X")


def top1_percent(batches: Iterable[tuple[X, Any]], logits: Callable[[X], Any]) -> float:
    """Top-1 accuracy in percent of `logits(x)` against the labels `y` of (x, y) batches.

    `logits(x)` and `y` are torch tensors or numpy arrays, of one kind: both have `argmax(1)`, an
    elementwise `==` and `sum()`. No batches score 0.
    """
    correct = total = 0
    for x, y in batches:
        correct += int((logits(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)
