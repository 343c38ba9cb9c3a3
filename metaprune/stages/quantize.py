"""quantize: the chosen model (fine-tuned, else generated) with its normalisation baked in is exported
to ONNX, quantized to INT8 with ONNX Runtime's static QDQ quantization calibrated on training
images, and the two are compared inside ONNX Runtime on the test split: top-1, file size, median
latency at batch 1 and 32 with fixed threads. If INT8 loses more than `quantize.max_drop` points,
quantization-aware training (resumable, `quantize/<id>/qat.pt`) tries to win them back, and the
better INT8 model is kept. Beside them: bf16 / fp16 autocast top-1 in PyTorch, dynamic INT8 of
the linear layers, and low-bit weights (`compress.*`) with their packed size. Files go to
`quantize/<id>/` with the result in its `result.json`, `<id>` naming the model and the settings,
so nothing is overwritten and a finished quantization is never redone.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from metaprune import deploy, qat
from metaprune.choice import Chosen, chosen_model
from metaprune.compress import apply_masks, dense_bytes, magnitude_prune, quantize_weights, sparse_bytes, sparsity_of
from metaprune.context import Context
from metaprune.identity import digest, quantize_identity
from metaprune.io import atomic_write_json
from metaprune.latency import onnx_latency, torch_latency
from metaprune.results import (
    DynamicInt8,
    HalfPrecision,
    LowBitWeights,
    QuantizeFiles,
    QuantizeResult,
    Unstructured,
    from_json_or_none,
    to_json,
)
from metaprune.run_dir import QUANTIZE
from metaprune.score import calibration_images, fixed_batches, top1
from metaprune.studies import study_name
from metaprune.train import train

RESULT = "result.json"
LATENCY_BATCHES = (1, 32)
HALF_IMAGES_CPU = 1000
MB = 1e6


def work_dir(run: Context, chosen: Chosen) -> Path:
    """One directory per (model, quantize settings): the model named by its weights' checkpoint."""
    source = str(chosen.checkpoint.name) if chosen.checkpoint else f"generated-{study_name(run)}-{chosen.candidate.trial}"
    return run.dir / QUANTIZE / digest(quantize_identity(source, chosen.candidate.config, run))


@dataclass
class Int8:
    """The INT8 file kept (static, or QAT's when that scores higher) and both top-1s."""

    path: Path
    top1: float
    method: str  # ptq | qat
    ptq_top1: float
    qat_top1: float | None  # None: no quantization-aware training ran


def finished(run: Context, work: Path) -> QuantizeResult | None:
    """The result of a finished quantization in `work`, if all its files are there (and its
    result.json has this version's layout: else it is quantized again)."""
    path = work / RESULT
    done = from_json_or_none(QuantizeResult, json.loads(path.read_text())) if path.exists() else None
    return done if done and all((run.dir / f).exists() for f in (done.files.fp32, done.files.int8)) else None


def run(run: Context) -> QuantizeResult:
    chosen = chosen_model(run)
    run.begin()
    work = work_dir(run, chosen)
    done = finished(run, work)
    if done is not None:  # this model under these settings is quantized and measured: nothing to redo
        run.store.report("quantize", done)
        return done
    summary = _measure(run, chosen, work)
    atomic_write_json(work / RESULT, to_json(summary))
    run.store.report("quantize", summary)
    if summary.max_drop_exceeded:
        print(
            f"warning: INT8 top-1 {summary.int8_top1:.2f}% is more than quantize.max_drop={run.cfg.quantize.max_drop:g} "
            f"points below FP32 {summary.fp32_top1:.2f}%; try quantize.qat_epochs, more quantize.calib_images, or ship FP32",
            file=sys.stderr,
        )
    return summary


def _measure(run: Context, chosen: Chosen, work: Path) -> QuantizeResult:
    """Export, quantize and measure the chosen model. The figures are taken in the order of the
    report's fields, as they always were: the timings draw their inputs from torch's generator."""
    cfg, data, shape = run.cfg.quantize, run.prepared, run.image_shape()
    model = copy.deepcopy(chosen.model).cpu().eval()  # a copy: the caller's model stays on its device
    deployable = deploy.Deployable(model, data.normalizer).eval()
    fp32 = deploy.export_onnx(deployable, shape, work / "model.onnx")

    def onnx_top1(path: Path) -> float:
        return deploy.onnx_top1(path, data.test.images, data.test.labels, cfg.batch, cfg.threads)

    fp32_top1 = onnx_top1(fp32)
    int8 = _int8(run, model, fp32, fp32_top1, work, onnx_top1)
    head, table = _latencies(run, deployable, fp32, int8.path, shape)
    return QuantizeResult(
        config=list(chosen.candidate.config), weights=chosen.weights, runtime="onnxruntime", fp32_top1=fp32_top1,
        int8_top1=int8.top1, int8_method=int8.method, ptq_int8_top1=int8.ptq_top1, qat_int8_top1=int8.qat_top1,
        fp32_mb=fp32.stat().st_size / MB, int8_mb=int8.path.stat().st_size / MB,
        fp32_latency_ms=head["onnxruntime_fp32"], int8_latency_ms=head["onnxruntime_int8"],
        int8_speedup=head["onnxruntime_fp32"] / head["onnxruntime_int8"],
        latency_ms=table, latency_threads=run.cfg.latency.threads,
        pytorch_top1=run.test_top1(model),
        onnx_max_abs_diff=deploy.onnx_max_abs_diff(deployable, fp32, deploy._example(shape, 4)),
        half=_half(run, model), dynamic_linear_int8=_dynamic(run, fp32, work, onnx_top1),
        low_bit_weights=_low_bit(run, model), unstructured=_unstructured(run, model),
        files=QuantizeFiles(fp32=str(fp32.relative_to(run.dir)), int8=str(int8.path.relative_to(run.dir))),
        max_drop_exceeded=fp32_top1 - int8.top1 > cfg.max_drop,
    )  # fmt: skip


def _int8(
    run: Context, model: torch.nn.Module, fp32: Path, fp32_top1: float, work: Path, onnx_top1: Callable[[Path], float]
) -> Int8:
    """Static INT8 (QDQ), and QAT when it loses more than quantize.max_drop (or always): the better file wins."""
    cfg, data = run.cfg.quantize, run.prepared
    calib = calibration_images(data.train, cfg.calib_images, run.cfg.data.split_seed).images
    int8 = deploy.quantize_int8(fp32, work / "model.int8.onnx", calib, cfg.per_channel, cfg.calibration, cfg.reduce_range)
    ptq_top1 = int8_top1 = onnx_top1(int8)
    method, qat_top1 = "ptq", None
    lost_too_much = fp32_top1 - ptq_top1 > cfg.max_drop
    if cfg.qat == "always" or (cfg.qat == "auto" and lost_too_much):  # quantization-aware training
        qat_path = _qat(run, model, calib, work)  # (not `qat`: that names the module)
        qat_top1 = onnx_top1(qat_path)
        if qat_top1 > ptq_top1:  # the INT8 artifact is the better of the two
            method, int8, int8_top1 = "qat", qat_path, qat_top1
    return Int8(path=int8, top1=int8_top1, method=method, ptq_top1=ptq_top1, qat_top1=qat_top1)


def _latencies(
    run: Context, deployable: torch.nn.Module, fp32: Path, int8: Path, shape: tuple[int, int, int]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Median latency (ms) of each file in ONNX Runtime and of FP32 in PyTorch eager, at batch 1 and 32:
    the figures at latency.batch (batch 1 if it is neither), and the whole table."""
    lat = run.cfg.latency
    table: dict[str, dict[str, float]] = {}
    for batch in LATENCY_BATCHES:
        ort_fp32 = onnx_latency(fp32, deploy.INPUT_NAME, shape, batch, lat.threads, lat.warmup, lat.runs).median_ms
        ort_int8 = onnx_latency(int8, deploy.INPUT_NAME, shape, batch, lat.threads, lat.warmup, lat.runs).median_ms
        eager = torch_latency(deployable, shape, batch, lat.threads, lat.warmup, lat.runs).median_ms
        table[f"batch_{batch}"] = {"onnxruntime_fp32": ort_fp32, "onnxruntime_int8": ort_int8, "pytorch_fp32": eager}
    head = table[f"batch_{lat.batch}"] if lat.batch in LATENCY_BATCHES else table["batch_1"]
    return head, table


def _qat(run: Context, model: torch.nn.Module, calib: torch.Tensor, work: Path) -> Path:
    """Quantization-aware training from the FP32 weights (resumable), exported as INT8 ONNX."""
    cfg, data = run.cfg.quantize, run.prepared
    batches = [data.normalizer(calib[i : i + cfg.qat_batch_size]) for i in range(0, len(calib), cfg.qat_batch_size)]
    trainee = qat.prepare_qat(model, batches, cfg.reduce_range)
    optim = qat.qat_optim_config(cfg, run.cfg.finetune)
    train(
        trainee, lambda x, step: trainee(x), data.train, data.normalizer, optim, seed=run.cfg.seed, checkpoint=work / "qat.pt",
        flip=run.cfg.data.flip, desc="qat", progress=run.cfg.progress, meta={"quantize": run.cfg.to_dict()["quantize"]},
    )  # fmt: skip
    return qat.export_qat_onnx(trainee.eval(), data.normalizer, run.image_shape(), work / "model.qat.onnx")


def _half(run: Context, model: torch.nn.Module) -> HalfPrecision:
    """Top-1 under autocast: what bf16 (and fp16) inference would give, beside FP32 on the same
    images. Without bf16/fp16 units a CPU emulates them (tens of times slower than FP32), so on a
    CPU only the first HALF_IMAGES_CPU test images are used; speed is not claimed."""
    data = run.prepared
    test = data.test if run.device.type == "cuda" else data.test.subset(torch.arange(min(HALF_IMAGES_CPU, len(data.test))))
    device = run.device.type
    batches = fixed_batches(test, data.normalizer, run.cfg.score.eval_batch_size, device)
    model = copy.deepcopy(model).to(device)  # a copy on the run's device: the caller's stays on the CPU
    return HalfPrecision(
        images=len(test),
        fp32=top1(model, batches),
        bf16=deploy.half_top1(model, batches, torch.bfloat16, device),
        fp16=deploy.half_top1(model, batches, torch.float16, device),
    )


def _dynamic(run: Context, fp32: Path, work: Path, onnx_top1: Callable[[Path], float]) -> DynamicInt8:
    path = deploy.quantize_dynamic_linear(fp32, work / "model.dynamic.onnx")
    return DynamicInt8(top1=onnx_top1(path), mb=path.stat().st_size / MB)


def _low_bit(run: Context, model: torch.nn.Module) -> LowBitWeights:
    """Low-bit weights (compress.weight_scheme, weight_bits) as a size option, with their top-1."""
    cfg, data = run.cfg.compress, run.prepared
    quantized, packed = quantize_weights(model, cfg.weight_scheme, cfg.weight_bits, cfg.kmeans_iters)
    batches = fixed_batches(data.test, data.normalizer, run.cfg.score.eval_batch_size, "cpu")
    return LowBitWeights(scheme=cfg.weight_scheme, bits=cfg.weight_bits, top1=top1(quantized, batches), packed_mb=packed / MB)


def _unstructured(run: Context, model: torch.nn.Module) -> Unstructured:
    """`compress.sparsity` of the conv/linear weights zeroed by global magnitude, without retraining:
    what unstructured pruning on top of the structured subnet gives, in top-1 and stored size."""
    data = run.prepared
    pruned = copy.deepcopy(model)
    apply_masks(pruned, magnitude_prune(pruned, run.cfg.compress.sparsity))
    batches = fixed_batches(data.test, data.normalizer, run.cfg.score.eval_batch_size, "cpu")
    return Unstructured(
        sparsity=sparsity_of(pruned),
        top1=top1(pruned, batches),
        sparse_mb=sparse_bytes(pruned) / MB,
        dense_mb=dense_bytes(model) / MB,
    )
