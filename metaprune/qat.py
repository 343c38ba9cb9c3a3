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

import torch
import torch.nn.functional as F
from torch import fx, nn

from metaprune.data import Normalizer
from metaprune.deploy import Deployable, QuantizeConfig, _write_onnx, export_onnx, onnx_session
from metaprune.train import OptimConfig
from search_spaces.graph import KeptGather


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


# Ops whose output is not a tensor (a tuple of chunks, a size): their tensors are quantized where used.
_NOT_TENSORS = {torch.chunk, torch.split, getattr}
_NOT_TENSOR_METHODS = {"chunk", "split", "size", "dim"}
_FUSED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _not_a_tensor(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _NOT_TENSORS
    return node.op == "call_method" and str(node.target) in _NOT_TENSOR_METHODS


_MOVING_MODULES = (KeptGather, nn.Flatten, nn.Dropout, nn.Identity)
_MOVING_FUNCTIONS = {torch.flatten, torch.reshape}
_MOVING_METHODS = {"flatten", "view", "reshape", "contiguous"}


def _moves_values(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An op whose output holds (some of) its input's values unchanged: picked, reshaped, copied."""
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _MOVING_MODULES)
    if node.op == "call_function":
        return node.target in _MOVING_FUNCTIONS
    return node.op == "call_method" and str(node.target) in _MOVING_METHODS


class SameRangeFakeQuant(nn.Module):
    """The fake quantization of `source`'s range, observing nothing: on values `source` quantized and
    an op only moved (a gather, a flatten). With equal scales ONNX Runtime moves them as uint8, where a
    range of their own would make it requantize (and round) between the two."""

    def __init__(self, source: ActivationFakeQuant) -> None:
        super().__init__()
        self._source = [source]  # in a list: not a submodule, its state is the source's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = self._source[0]
        if source.observing:
            return x
        scale, zero_point = _asymmetric_qparams(float(source.low), float(source.high))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


def _fused_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], _FUSED_ACTIVATIONS)
    return node.op == "call_function" and node.target in (F.relu, torch.relu, F.relu6, F.hardtanh)


def _trace(network: nn.Module) -> fx.GraphModule:
    graph = copy.deepcopy(network) if isinstance(network, fx.GraphModule) else fx.symbolic_trace(copy.deepcopy(network))
    graph.graph.eliminate_dead_code()
    return graph


def _fold_batchnorms(graph: fx.GraphModule, weight_max: int) -> None:
    """In place: every BatchNorm that alone reads a conv becomes part of that conv (folded, fake-quantized);
    every other conv and linear fake-quantizes its weight."""
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(module, nn.BatchNorm2d):
            continue
        source = node.args[0]
        assert isinstance(source, fx.Node), node.args
        conv = modules.get(str(source.target)) if source.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(source.users) != 1:
            raise ValueError(f"BatchNorm {node.target} does not follow a conv alone; QAT cannot fold it")
        _set_module(graph, str(source.target), _folded_conv(conv, module, weight_max))
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
    graph.delete_all_unused_submodules()
    for path, module in list(graph.named_modules()):
        if type(module) is nn.Conv2d:
            _set_module(graph, path, _fake_quant_copy(module, FakeQuantConv2d, weight_max))
        elif type(module) is nn.Linear:
            _set_module(graph, path, _fake_quant_copy(module, FakeQuantLinear, weight_max))


def _fake_quant_copy(module: nn.Module, kind: type[nn.Module], weight_max: int) -> nn.Module:
    quantized = copy.deepcopy(module)
    quantized.__class__ = kind  # same parameters and geometry, the fake-quantizing forward
    quantized.weight_max = weight_max  # type: ignore[assignment]
    return quantized


def _quantize_activations(graph: fx.GraphModule) -> None:
    """In place: a fake-quantized output on the input and on every op's output but the logits and those
    an activation follows that ONNX Runtime fuses into the op. Even ops that only move values (a gather,
    a flatten) get one: ORT runs an op in integers only where a QuantizeLinear/DequantizeLinear pair
    stands right before it; a second pair on unchanged values has the same range and changes nothing."""
    modules = dict(graph.named_modules())
    count = 0
    for node in list(graph.graph.nodes):
        if node.op in ("output", "get_attr") or _not_a_tensor(node):
            continue
        if node.users and all(_fused_activation(user, modules) or user.op == "output" for user in node.users):
            continue  # the activation's output is quantized instead; the logits stay float
        name = f"quant_{count}"
        count += 1
        source = node.all_input_nodes[0] if _moves_values(node, modules) and node.all_input_nodes else None
        before = modules.get(str(source.target)) if source is not None and source.op == "call_module" else None
        quantizer = SameRangeFakeQuant(before) if isinstance(before, ActivationFakeQuant) else ActivationFakeQuant()
        graph.add_submodule(name, quantizer)
        modules[name] = quantizer
        with graph.graph.inserting_after(node):
            quant = graph.graph.call_module(name, (node,))
        node.replace_all_uses_with(quant, delete_user_cb=lambda user, quant=quant: user is not quant)
    graph.graph.lint()
    graph.recompile()


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class QATNetwork(nn.Module):
    """Any traceable network (a plain subnet) with BN folded and ORT's INT8 scheme simulated; takes normalised input."""

    def __init__(self, network: nn.Module, reduce_range: bool = True) -> None:
        super().__init__()
        try:
            graph = _trace(network)
        except Exception as exc:  # fx raises many kinds
            raise TypeError(f"QAT needs a network torch.fx can trace, {type(network).__name__} is not: {exc}") from None
        if not any(isinstance(m, nn.Conv2d) for m in graph.modules()):
            raise TypeError(f"QAT needs a convolutional network; {type(network).__name__} has no conv")
        _fold_batchnorms(graph, _weight_max(reduce_range))
        _quantize_activations(graph)
        self.net = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
