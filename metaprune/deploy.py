"""Deployable artifacts of a subnet: ONNX, a `torch.export` program, and INT8 that really is faster.

Why these formats:

- **ONNX** (`export_onnx`) runs anywhere ONNX Runtime does, with no project code and no torch: the
  input normalisation is baked in (`Deployable`), so a user feeds pixels / 255 and reads logits:
  `onnxruntime.InferenceSession("model.onnx").run(None, {"images": x})`. Exported with the
  TorchScript-based exporter (`dynamo=False`): the default torch.export-based exporter of torch
  2.13 imports `onnxscript`, which is not a dependency of this project.
- **A `torch.export` program** (`export_program`, `.pt2`) reloads with plain torch, no project
  code either::

      import torch
      model = torch.export.load("model.pt2").module()
      logits = model(images_uint8.float() / 255)

- **INT8 with ONNX Runtime's static quantization** (`quantize_int8`, QDQ format, per-channel
  symmetric int8 weights, uint8 activations with ranges calibrated on training images): ONNX
  Runtime fuses the QuantizeLinear/DequantizeLinear pairs around each conv and add into one
  integer kernel (QLinearConv, QLinearAdd), which makes it the fastest INT8 path on CPU here
  (PyTorch eager has no fast INT8 conv without the deprecated `torch.ao.quantization`). Weights
  keep 7 bits by default (`reduce_range`): see `quantize_int8`. `quantize_dynamic_linear` is the
  cheap variant for models whose time is in linear layers (activations quantized on the fly, no
  calibration).
- **Quantization-aware training** (`metaprune.qat`) is the fallback when post-training INT8 loses
  too much; its export runs as the same integer kernels.

Every artifact is written through `metaprune.io` (temp file, fsync, rename): a kill never leaves a
half-written file behind.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metaprune.accuracy import top1_percent
from metaprune.data import Normalizer
from metaprune.io import atomic_write_bytes

INPUT_NAME, OUTPUT_NAME = "images", "logits"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantizeConfig:
    calib_images: int = 512  # training images (seeded random subset) that calibrate INT8 activation ranges
    calibration: str = "minmax"  # minmax (best top-1 measured) | entropy | percentile: how activation ranges are chosen
    per_channel: bool = True  # one int8 scale per output channel of each weight (else one per tensor)
    reduce_range: bool = True  # 7-bit weights (-64..64): ORT's uint8 x int8 kernels overflow int16 on AVX2 CPUs without VNNI
    max_drop: float = 1.0  # top-1 points INT8 may lose against FP32; above it, quantization-aware training
    qat: str = "auto"  # auto: QAT when post-training INT8 loses > max_drop | always | never
    qat_epochs: int = 1  # epochs of quantization-aware training (the fallback)
    qat_lr: float = 0.005  # peak learning rate of quantization-aware training (cosine; other settings as the fine-tune's)
    qat_batch_size: int = 64  # images per step of quantization-aware training
    batch: int = 64  # images per ONNX Runtime call when measuring top-1
    threads: int = 0  # ONNX Runtime intra-op threads (0: one per physical core)


# --- FP32 exports -------------------------------------------------------------------------------


class Deployable(nn.Module):
    """A subnet with its input normalisation baked in: takes float32 NCHW pixels in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, subnet: nn.Module, normalizer: Normalizer) -> None:
        super().__init__()
        self.subnet = subnet
        self.register_buffer("mean", torch.tensor(normalizer.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(normalizer.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.subnet((images - self.mean) / self.std)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = [(m, m.training) for m in model.modules()]  # each its own: a fresh wrapper trains, what it wraps may not
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _example(input_shape: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, opset: int = 17) -> Path:
    """Write `model` (e.g. a `Deployable`) as ONNX: input "images" (N, C, H, W), output "logits".

    The TorchScript-based exporter (`dynamo=False`, deprecated upstream) because torch 2.13's
    default exporter imports onnxscript, which this project does not depend on.
    """
    with _eval_mode(model), warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (_example(input_shape),),
            traced,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
        )
        return _write_onnx(traced.read_bytes(), path)


def _write_onnx(data: bytes, path: str | Path) -> Path:
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    atomic_write_bytes(path, data)
    return Path(path)


def onnx_session(path: str | Path, threads: int = 0, optimized_file: str | Path | None = None) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads (0: ORT's default) and one inter-op:
    the one way this project opens an ONNX file, to score it, time it or fold it.

    Its threads do not spin after a run: spinning threads starve whatever the process runs next
    (alternating sessions on 2 cores, ResNet-20 INT8 took 58 ms a batch with spinning, 20 ms without).
    With `optimized_file`, the graph after ORT's *basic* optimizations is written there: those keep
    to standard ONNX ops, so the saved file still runs anywhere (the full level fuses into ORT-only ops).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_file is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized_file)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_max_abs_diff(model: nn.Module, path: str | Path, x: torch.Tensor, threads: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| between `model` and the ONNX file at `path` on input `x`."""
    with _eval_mode(model), torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(path, threads).run(None, {INPUT_NAME: x.numpy()})[0]
    return float(np.abs(got - expected).max())


def export_program(model: nn.Module, example: torch.Tensor, path: str | Path) -> float:
    """Save `model` as a `torch.export` program (.pt2, dynamic batch); reload it and return the
    largest |reloaded - model| output difference on `example` (batch >= 2)."""
    batch = torch.export.Dim("batch")
    with _eval_mode(model), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        expected = model(example)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    with torch.no_grad():
        reloaded = torch.export.load(str(path)).module()(example)
    return float((reloaded - expected).abs().max())


# --- INT8 with ONNX Runtime ---------------------------------------------------------------------


def pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 images (N, C, H, W) as the float32 [0, 1] input of a deployable model."""
    return (images.float() / 255).numpy()


class _CalibrationReader:
    """Feeds calibration images to ONNX Runtime's calibrator, `batch` at a time."""

    def __init__(self, images: torch.Tensor, batch: int) -> None:
        self.batches = iter([pixels(images[i : i + batch]) for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        return None if x is None else {INPUT_NAME: x}


def quantize_int8(
    fp32_onnx: str | Path,
    out: str | Path,
    calibration_images: torch.Tensor,
    per_channel: bool = True,
    method: str = QuantizeConfig.calibration,
    reduce_range: bool = True,
    batch: int = 64,
) -> Path:
    """Static INT8 (QDQ) of an FP32 ONNX file; activation ranges from uint8 `calibration_images`.

    Keep `reduce_range` (7-bit weights) unless the target CPU has VNNI or AMX: without it, ORT's
    uint8 x int8 kernels sum pairs of products in int16, which overflows with full-range weights
    on AVX2 (measured here: a CIFAR-10 ResNet-20 fell from 69.7% to 65.0% top-1, 69.7% with it;
    same speed). `method`: "minmax" matched FP32 best (CIFAR-10: 69.7 vs percentile 69.6 and a
    2048-bin entropy 68.8); "entropy" as `quantize_static` runs it has 128 bins for 128 levels,
    which makes it minmax.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, but got {method!r}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _CalibrationReader(calibration_images, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        return _write_onnx(quantized.read_bytes(), out)


def quantize_dynamic_linear(fp32_onnx: str | Path, out: str | Path) -> Path:
    """Dynamic INT8 of the linear layers only (MatMul, Gemm): int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32_onnx), str(quantized), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        return _write_onnx(quantized.read_bytes(), out)


def onnx_logits(path: str | Path, images: torch.Tensor, batch: int = 64, threads: int = 0) -> np.ndarray:
    """The logits an ONNX file gives for uint8 `images` (N, C, H, W)."""
    session = onnx_session(path, threads)
    parts = [session.run(None, {INPUT_NAME: pixels(images[i : i + batch])})[0] for i in range(0, len(images), batch)]
    return np.concatenate(parts)


def onnx_top1(path: str | Path, images: torch.Tensor, labels: torch.Tensor, batch: int = 64, threads: int = 0) -> float:
    """Top-1 accuracy (percent) of an ONNX file on uint8 `images` (N, C, H, W)."""
    session = onnx_session(path, threads)
    batches = ((pixels(images[i : i + batch]), labels[i : i + batch].numpy()) for i in range(0, len(images), batch))
    return top1_percent(batches, lambda x: session.run(None, {INPUT_NAME: x})[0])


# --- Half precision -----------------------------------------------------------------------------


def autocast_supported(dtype: torch.dtype, device_type: str) -> bool:
    """Whether `torch.autocast(device_type, dtype)` runs here: bfloat16 on a GPU needs one that has or
    emulates it (torch's own test, on which autocast raises); the rest runs (CPUs emulate both halves)."""
    return not (device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported())


def half_top1(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype, device_type: str = "cpu"
) -> float | None:
    """Top-1 (percent) of `model` on (input, label) batches under `torch.autocast(device_type, dtype)`:
    bfloat16 or float16 (torch 2.13 autocasts both on CPU too); float32 gives the reference. None where
    autocast would refuse `dtype` (bfloat16 on a GPU that neither has nor emulates it): unsupported, not a failure."""
    if not autocast_supported(dtype, device_type):
        return None
    autocast = torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)
    with _eval_mode(model), torch.no_grad(), autocast:
        return top1_percent(batches, model)
