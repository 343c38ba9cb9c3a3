"""Quantization-aware training in exactly ONNX Runtime's INT8 scheme, exported as QDQ ONNX.

The fallback when post-training INT8 (`metaprune.deploy.quantize_int8`) loses too much: BatchNorm
is folded into the conv weights, then the folded network trains with fake quantization as ONNX
Runtime computes it (per-channel symmetric int8 weights, 7-bit by default like `quantize_int8`,
per-tensor uint8 activations whose ranges are observed, not learned), with the project's training
loop. `export_qat_onnx` writes QuantizeLinear/DequantizeLinear pairs carrying the trained ranges,
which ONNX Runtime runs as the same integer kernels as post-training INT8.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from metaprune.data import Normalizer
from metaprune.deploy import Deployable, QuantizeConfig, _write_onnx, export_onnx, onnx_session
from metaprune.train import OptimConfig


def _asymmetric_qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 scale and zero point of the range [low, high] widened to hold 0, as ONNX Runtime computes them."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-low / scale))))


class ActivationFakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization with an observed range: the global min/max while
    calibrating (`observing`), an exponential moving average of batch min/max while training."""

    low: torch.Tensor
    high: torch.Tensor
    seen: torch.Tensor

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum, self.observing = momentum, False
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing or self.training:
            self._observe(x.detach())
        if self.observing:
            return x
        scale, zero_point = _asymmetric_qparams(float(self.low), float(self.high))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min(), x.max()
        if bool(self.seen) and self.observing:
            low, high = torch.minimum(self.low, low), torch.maximum(self.high, high)
        elif bool(self.seen):
            low, high = self.low.lerp(low, self.momentum), self.high.lerp(high, self.momentum)
        self.low.copy_(low)
        self.high.copy_(high)
        self.seen.fill_(True)


def _fake_quant_weight(weight: torch.Tensor, weight_max: int) -> torch.Tensor:
    """Symmetric int8 per output channel (scale = max |w| / weight_max, zero point 0), as ORT's weights."""
    scale = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(1e-8) / weight_max
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -128, 127)


def _weight_max(reduce_range: bool) -> int:
    """Largest |int8 weight|: 64 in ORT's reduced range, else 127 (its symmetric range is -127..127)."""
    return 64 if reduce_range else 127


class FakeQuantConv2d(nn.Conv2d):
    weight_max = 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _fake_quant_weight(self.weight, self.weight_max), self.bias)


class FakeQuantLinear(nn.Linear):
    weight_max = 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _fake_quant_weight(self.weight, self.weight_max), self.bias)


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, weight_max: int) -> FakeQuantConv2d:
    """`conv` followed by `bn` (its running statistics) as one fake-quantized conv with a bias."""
    assert bn.running_mean is not None and bn.running_var is not None, "BatchNorm without running statistics"
    geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
    fused = FakeQuantConv2d(**{name: getattr(conv, name) for name in geometry}, bias=True)
    fused.weight_max = weight_max
    factor = torch.rsqrt(bn.running_var + bn.eps) * (bn.weight if bn.affine else 1.0)
    bias = (conv.bias if conv.bias is not None else 0.0) - bn.running_mean
    with torch.no_grad():
        fused.weight = nn.Parameter(conv.weight * factor.view(-1, 1, 1, 1))
        fused.bias = nn.Parameter(bias * factor + (bn.bias if bn.affine else 0.0))
    return fused


def _quantize_blocks(model: nn.Module, weight_max: int) -> None:
    """In place: every `conv`+`bn` pair (the project's ConvBNAct) becomes one folded fake-quantized
    conv; every `act` (of a conv, or after a residual add) and every max pool gets a fake-quantized
    output, where ONNX Runtime puts a QuantizeLinear."""
    for module in list(model.modules()):
        conv, bn, act = (getattr(module, name, None) for name in ("conv", "bn", "act"))
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv, module.bn = _folded_conv(conv, bn, weight_max), nn.Identity()
        if isinstance(act, nn.Module):
            module.act = nn.Sequential(act, ActivationFakeQuant())
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.Sequential(child, ActivationFakeQuant()))
    left = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers {left} do not follow a conv as `conv`/`bn` children; QAT cannot fold them")


M = TypeVar("M", bound=nn.Module)


def _part(network: nn.Module, name: str, kind: type[M]) -> M:
    part = getattr(network, name, None)
    if not isinstance(part, kind):
        raise TypeError(f"QAT needs a search_spaces.Network, but {type(network).__name__}.{name} is not a {kind.__name__}")
    return part


class QATNetwork(nn.Module):
    """A `search_spaces.Network` with BN folded and ORT's INT8 scheme simulated; takes normalised input."""

    def __init__(self, network: nn.Module, reduce_range: bool = True) -> None:
        super().__init__()
        layers, pool = _part(network, "layers", nn.Module), _part(network, "pool", nn.Module)
        linear = _part(network, "classifier", nn.Linear)
        self.input_quant, self.layers, self.pool = ActivationFakeQuant(), copy.deepcopy(layers), copy.deepcopy(pool)
        _quantize_blocks(self.layers, _weight_max(reduce_range))
        self.features_quant = ActivationFakeQuant()
        self.classifier = FakeQuantLinear(linear.in_features, linear.out_features)
        self.classifier.load_state_dict(linear.state_dict())
        self.classifier.weight_max = _weight_max(reduce_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.layers(self.input_quant(x))).flatten(1)
        return self.classifier(self.features_quant(features))


def _activation_quants(model: nn.Module) -> list[ActivationFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]


def prepare_qat(subnet: nn.Module, calibration: Iterable[torch.Tensor], reduce_range: bool = True) -> QATNetwork:
    """A QAT copy of `subnet`, its activation ranges set to the min/max over `calibration`
    (normalised batches). Train it like the subnet (`metaprune.train.train`); it takes normalised input.
    `reduce_range` as in `quantize_int8`."""
    model = QATNetwork(subnet, reduce_range)
    quants = _activation_quants(model)
    for quant in quants:
        quant.observing = True
    with torch.no_grad():
        for x in calibration:
            model(x)
    for quant in quants:
        quant.observing = False
    return model


def qat_optim_config(cfg: QuantizeConfig, trained_with: OptimConfig) -> OptimConfig:
    """`metaprune.train.train` settings for QAT: the objective the subnet was trained with
    (`trained_with`: label smoothing, weight decay, momentum), continued briefly at a low learning rate."""
    return dataclasses.replace(
        trained_with, epochs=cfg.qat_epochs, batch_size=cfg.qat_batch_size, lr=cfg.qat_lr, schedule="cosine"
    )


def export_qat_onnx(
    qat_model: QATNetwork, normalizer: Normalizer, input_shape: tuple[int, int, int], path: str | Path, opset: int = 17
) -> Path:
    """The QAT model as an INT8 ONNX file like `quantize_int8`'s: QuantizeLinear/DequantizeLinear
    pairs with the trained ranges (fake quantization exports as QDQ) and int8 weights."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # activation ranges are meant to be constants
        traced = export_onnx(Deployable(qat_model, normalizer), input_shape, Path(tmp) / "traced.onnx", opset)
        return _write_onnx(_fold_constants(traced, Path(tmp) / "folded.onnx"), path)


def _fold_constants(path: Path, folded: Path) -> bytes:
    """ORT's basic graph optimizations (standard ONNX ops only), saved: they compute each weight's
    scale and fold its QuantizeLinear into an int8 initializer, so the file stores int8 weights."""
    import onnx

    onnx_session(path, optimized_file=folded)
    model = onnx.load(str(folded))
    used = {node.domain for node in model.graph.node} | {""}
    kept = [opset for opset in model.opset_import if opset.domain in used]  # ORT lists every domain it knows
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model.SerializeToString()
