"""One top-1 count behind every evaluation: PyTorch's, ONNX Runtime's and autocast's agree on one model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metaprune import deploy
from metaprune.accuracy import top1_percent
from metaprune.data import Normalizer
from metaprune.score import top1

SHAPE = (3, 4, 4)


def test_the_count_is_the_same_over_tensors_and_arrays() -> None:
    logits = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(1))
    correct = int((logits.argmax(1) == labels).sum())
    as_tensors = [(logits[i : i + 7], labels[i : i + 7]) for i in range(0, 50, 7)]
    as_arrays = [(x.numpy(), y.numpy()) for x, y in as_tensors]
    assert top1_percent(as_tensors, lambda x: x) == top1_percent(as_arrays, lambda x: x) == 100.0 * correct / 50
    assert top1_percent([], lambda x: x) == 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: no onnxscript needed
def test_pytorch_onnx_and_autocast_top1_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (37, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 3, (37,), generator=torch.Generator().manual_seed(3))
    normalizer = Normalizer.fit(images)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    batches = [(normalizer(images[i : i + 8]), labels[i : i + 8]) for i in range(0, 37, 8)]
    path = deploy.export_onnx(deploy.Deployable(net, normalizer), SHAPE, tmp_path / "net.onnx")

    expected = top1(net, batches)
    assert 0 < expected < 100  # a count that could be off either way
    assert deploy.half_top1(net, batches, torch.float32) == expected
    assert deploy.onnx_top1(path, images, labels, batch=5, threads=1) == expected
    # and the ONNX count is the one its logits give
    predicted = deploy.onnx_logits(path, images, batch=5, threads=1).argmax(1)
    assert expected == 100.0 * int((predicted == labels.numpy()).sum()) / 37
    assert np.isclose(expected, 100.0 * float((predicted == labels.numpy()).mean()))  # the old formula, to the last bit or so
