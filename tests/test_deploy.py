"""Deployable exports and INT8: a digits model trained in seconds, through every path of metaprune.deploy.

Tolerances: FP32 ONNX and the reloaded program match PyTorch to 1e-4; INT8 (post-training or
QAT) agrees with FP32 on >= 95% of test predictions, its logits within 10% of the FP32 logits'
range, and its top-1 within 1 point (the digits test split has 359 images: 1 point is 3.6 images).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import search_spaces as ss
from metaprune import deploy
from metaprune import qat as qat_training
from metaprune.config import _field_comments
from metaprune.data import ImageData, Normalizer, Splits, load_digits
from metaprune.train import OptimConfig, train

SHAPE = (1, 8, 8)
TRAINING = OptimConfig(epochs=4, batch_size=32, lr=0.1, checkpoint_every=10**6)


class Trained:
    def __init__(self, net: nn.Module, normalizer: Normalizer, splits: Splits, root: Path) -> None:
        self.net, self.normalizer, self.splits, self.root = net, normalizer, splits, root
        self.deployable = deploy.Deployable(net, normalizer).eval()
        self.fp32 = deploy.export_onnx(self.deployable, SHAPE, root / "fp32.onnx")
        self.calibration = splits.train.images[
            torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:256]
        ]

    @property
    def test(self) -> ImageData:
        return self.splits.test

    def top1(self, path: Path) -> float:
        return deploy.onnx_top1(path, self.test.images, self.test.labels, batch=128, threads=1)

    def logits(self, path: Path) -> np.ndarray:
        return deploy.onnx_logits(path, self.test.images, batch=128, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """ResNet-20 at half width on 8x8 digits, 4 epochs (about 94% top-1)."""
    root = tmp_path_factory.mktemp("deploy")
    splits = load_digits()
    normalizer = Normalizer.fit(splits.train.images)
    space = ss.create_space("resnet20", 10, 1, 8, 0.5)
    torch.manual_seed(0)
    net = ss.build_subnet(space, space.largest)
    train(net, lambda x, step: net(x), splits.train, normalizer, TRAINING, seed=0, checkpoint=root / "net.pt", progress=False)
    return Trained(net.eval(), normalizer, splits, root)


@pytest.fixture(scope="module")
def int8(trained: Trained) -> Path:
    return deploy.quantize_int8(trained.fp32, trained.root / "int8.onnx", trained.calibration)


@pytest.fixture(scope="module")
def qat(trained: Trained) -> tuple[qat_training.QATNetwork, Path]:
    norm = trained.normalizer
    model = qat_training.prepare_qat(trained.net, [norm(trained.calibration)])
    cfg = qat_training.qat_optim_config(deploy.QuantizeConfig(), TRAINING)
    train(
        model,
        lambda x, step: model(x),
        trained.splits.train,
        norm,
        cfg,
        seed=1,
        checkpoint=trained.root / "qat.pt",
        progress=False,
    )
    return model.eval(), qat_training.export_qat_onnx(model, norm, SHAPE, trained.root / "qat.onnx")


def op_types(path: Path) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def runtime_op_types(path: Path, tmp_path: Path) -> collections.Counter[str]:
    """The ops ONNX Runtime actually runs: its fully optimised graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return op_types(tmp_path / "optimized.onnx")


def assert_agrees(fp32: np.ndarray, int8: np.ndarray) -> None:
    agreement = float((fp32.argmax(1) == int8.argmax(1)).mean())
    assert agreement >= 0.95, f"INT8 and FP32 predictions agree on {agreement:.1%} of images, expected >= 95%"
    error, span = float(np.abs(fp32 - int8).max()), float(fp32.max() - fp32.min())
    assert error <= 0.10 * span, f"INT8 logits differ by up to {error:.3f}, over 10% of the FP32 range {span:.3f}"


def test_onnx_runs_the_model_with_normalisation_baked_in(trained: Trained) -> None:
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1))  # another batch size than the export's
    assert deploy.onnx_max_abs_diff(trained.deployable, trained.fp32, x) < 1e-4
    with torch.no_grad():
        expected = trained.net(trained.normalizer(trained.test.images[:16]))
    got = deploy.onnx_session(trained.fp32, 1).run(None, {"images": deploy.pixels(trained.test.images[:16])})[0]
    assert np.abs(got - expected.numpy()).max() < 1e-4
    model = onnx.load(str(trained.fp32))
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    assert trained.top1(trained.fp32) > 85


def test_exported_program_reloads_with_plain_torch(trained: Trained) -> None:
    path = trained.root / "model.pt2"
    assert deploy.export_program(trained.deployable, torch.rand(4, *SHAPE), path) < 1e-5
    x = trained.test.images[:7].float() / 255  # the docstring's three lines, at another batch size
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), trained.deployable(x), rtol=0, atol=1e-5)


def test_static_int8_is_accurate_smaller_and_runs_integer_kernels(trained: Trained, int8: Path, tmp_path: Path) -> None:
    assert_agrees(trained.logits(trained.fp32), trained.logits(int8))
    fp32_top1, int8_top1 = trained.top1(trained.fp32), trained.top1(int8)
    assert int8_top1 >= fp32_top1 - 1.0, f"INT8 top-1 {int8_top1:.2f} vs FP32 {fp32_top1:.2f}"
    assert int8.stat().st_size < trained.fp32.stat().st_size
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(op_types(int8))
    ran = runtime_op_types(int8, tmp_path)
    assert ran["QLinearConv"] > 0 and ran["Conv"] == 0, f"some convs stay float: {dict(ran)}"


def test_qat_export_holds_qdq_runs_int8_and_keeps_accuracy(trained: Trained, qat: tuple[Any, Path], tmp_path: Path) -> None:
    model, path = qat
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(op_types(path))
    ran = runtime_op_types(path, tmp_path)
    assert ran["QLinearConv"] > 0 and ran["Conv"] == 0, f"some convs stay float: {dict(ran)}"
    with torch.no_grad():
        simulated = model(trained.normalizer(trained.test.images)).numpy()
    assert_agrees(simulated, trained.logits(path))  # PyTorch's fake quantization is what ORT runs
    assert_agrees(trained.logits(trained.fp32), trained.logits(path))
    fp32_top1, qat_top1 = trained.top1(trained.fp32), trained.top1(path)
    assert qat_top1 >= fp32_top1 - 1.0, f"QAT INT8 top-1 {qat_top1:.2f} vs FP32 {fp32_top1:.2f}"


def test_qat_folds_every_batchnorm(trained: Trained) -> None:
    model = qat_training.QATNetwork(trained.net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, qat_training.FakeQuantConv2d) for m in model.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in trained.net.modules()
    )
    with pytest.raises(TypeError, match="has no conv"):
        qat_training.QATNetwork(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_dynamic_linear_int8_runs_and_agrees(trained: Trained) -> None:
    path = deploy.quantize_dynamic_linear(trained.fp32, trained.root / "dynamic.onnx")
    assert "DynamicQuantizeLinear" in op_types(path)
    assert_agrees(trained.logits(trained.fp32), trained.logits(path))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_top1(trained: Trained, dtype: torch.dtype) -> None:
    batches = [(trained.test.images.float() / 255, trained.test.labels)]
    fp32 = deploy.half_top1(trained.deployable, batches, torch.float32)
    assert deploy.half_top1(trained.deployable, batches, dtype) >= fp32 - 1.0


def test_bad_calibration_method_writes_nothing(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration method"):
        deploy.quantize_int8(trained.fp32, tmp_path / "int8.onnx", trained.calibration, method="mse")
    assert list(tmp_path.iterdir()) == []


def test_quantize_config_documents_every_field() -> None:
    fields = deploy.QuantizeConfig.__dataclass_fields__
    assert set(_field_comments(deploy.QuantizeConfig)) == set(fields)
    assert deploy.QuantizeConfig().calibration in deploy.CALIBRATION_METHODS
