"""Comparison arms for MetaPruning's channel pruning: global magnitude (unstructured) pruning and
low-bit weight quantization, with the bytes each needs to store a model.

Both act on the weight of every Conv2d and Linear (the "prunable" weights: nearly all parameters).
BatchNorm tensors and biases are few and sensitive, so they stay fp32 and count at full size.
Neither arm makes eager PyTorch faster: dense kernels multiply zeros, and quantized weights run
dequantized to fp32. What they change is storage, which `sparse_bytes` and `quantize_weights`
count in stated formats; channel pruning, by contrast, shrinks both storage and FLOPs.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metaprune.errors import UserError
from metaprune.train import Forward

PRUNABLE = (nn.Conv2d, nn.Linear)
SCHEMES = ("uniform", "pow2", "kmeans")
BITS = {"uniform": (2, 8), "pow2": (2, 8), "kmeans": (1, 8)}  # inclusive range of weight bits per scheme
Masks = dict[str, torch.Tensor]  # state-dict key of a weight -> bool tensor of its shape, True = kept


@dataclass
class CompressConfig:
    sparsity: float = 0.5  # unstructured comparison arm: fraction of conv/linear weights zeroed (global magnitude)
    weight_bits: int = 4  # bits per stored conv/linear weight (uniform, pow2: 2-8; kmeans: 1-8)
    weight_scheme: str = "kmeans"  # uniform (per-channel symmetric) | pow2 (sign + exponent) | kmeans (per-layer codebook)
    kmeans_iters: int = 20  # Lloyd iterations of each layer's kmeans codebook (a fixed count: reproducible)


def check_compress_config(cfg: CompressConfig, section: str = "compress") -> None:
    """Reject bad values before any work starts, naming the key and the allowed range."""
    if not 0.0 <= cfg.sparsity <= 1.0:
        raise UserError(f"config key '{section}.sparsity' must be in [0, 1], got {cfg.sparsity!r}")
    if cfg.weight_scheme not in SCHEMES:
        raise UserError(f"config key '{section}.weight_scheme' must be one of {', '.join(SCHEMES)}, got {cfg.weight_scheme!r}")
    low, high = BITS[cfg.weight_scheme]
    if not low <= cfg.weight_bits <= high:
        rule = f"in [{low}, {high}] for {cfg.weight_scheme}"
        raise UserError(f"config key '{section}.weight_bits' must be {rule}, got {cfg.weight_bits!r}")
    if cfg.kmeans_iters < 0:
        raise UserError(f"config key '{section}.kmeans_iters' must be >= 0, got {cfg.kmeans_iters!r}")


# --- unstructured pruning ----------------------------------------------------------------------


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight (a Parameter) of every Conv2d and Linear, keyed as in the model's state dict."""
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE)
    }


def magnitude_prune(model: nn.Module, sparsity: float) -> Masks:
    """Masks zeroing the `round(sparsity * total)` smallest-magnitude prunable weights of the model.

    One global threshold over all layers (not a fraction per layer), so layers of many small
    weights (typically the wide, late ones) lose more. A stable sort of |w| in state-dict order breaks ties by position: the
    count is exact and the masks are a deterministic function of the weights, even when many
    weights are equal. The model is not changed: `apply_masks` zeroes the weights.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    weights = prunable_weights(model)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    keep[torch.sort(magnitudes, stable=True).indices[: round(sparsity * magnitudes.numel())]] = False
    pieces = keep.split([w.numel() for w in weights.values()])
    return {name: piece.view_as(w) for (name, w), piece in zip(weights.items(), pieces)}


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero, in place, every weight entry whose mask is False."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params or params[name].shape != mask.shape:
                shape = tuple(params[name].shape) if name in params else "absent"
                raise ValueError(f"mask {name!r} of shape {tuple(mask.shape)} does not fit the model's {name!r} ({shape})")
            params[name].masked_fill_(~mask.to(params[name].device), 0.0)


def masks_from_zeros(model: nn.Module) -> Masks:
    """Masks read back from a pruned model's zeros (e.g. after loading its checkpoint or export).

    Equal to the original masks unless training drove a kept weight to exactly 0.0, which then
    counts as pruned: harmless, since a zero costs nothing either way.
    """
    return {name: w.detach() != 0 for name, w in prunable_weights(model).items()}


def sparsity_of(model: nn.Module) -> float:
    """Measured fraction of prunable weights that are exactly zero."""
    weights = list(prunable_weights(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


class MaskedTraining:
    """Keeps masked weights at exactly zero while `metaprune.train.train` fine-tunes the model.

        with MaskedTraining(model, masks) as masked:
            train(model, masked.wrap(forward), ...)

    Three cheap guards. Gradient hooks zero the masked entries of each gradient, so a zero weight
    stays zero under SGD with momentum and weight decay (and Adam, AdamW): its gradient, momentum
    and decay are all zero. `wrap(forward)` re-applies the masks before every forward, which also
    covers weights restored from a checkpoint or optimizer state older than the masks. Entering
    and leaving the block apply them too, so the trained model ends exactly as sparse.

    Resume: `train` checkpoints the plain state dict (no extra keys, so weights load into a plain
    subnet), in which masked weights are exact zeros. The masks are a deterministic function of
    the weights fine-tuning starts from, so a resumed stage recomputes them with `magnitude_prune`
    on those same starting weights, then calls `train`, which loads its checkpoint over them. Or
    keep the masks with `atomic_torch_save` (bool tensors load with `weights_only=True`), or read
    them back with `masks_from_zeros`.
    """

    def __init__(self, model: nn.Module, masks: Masks) -> None:
        self.model, self.masks = model, masks
        self._handles: list[Any] = []

    def __enter__(self) -> MaskedTraining:
        apply_masks(self.model, self.masks)
        params = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            self._handles.append(params[name].register_hook(_gradient_mask(mask.to(params[name].device))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        apply_masks(self.model, self.masks)

    def wrap(self, forward: Forward) -> Forward:
        def masked_forward(x: torch.Tensor, step: int) -> torch.Tensor:
            apply_masks(self.model, self.masks)
            return forward(x, step)

        return masked_forward


def _gradient_mask(mask: torch.Tensor) -> Any:
    # masked_fill rather than a product: a NaN or inf gradient must not leak into pruned weights
    return lambda grad: grad.masked_fill(~mask, 0.0)


# --- storage size -------------------------------------------------------------------------------


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _other_bytes(model: nn.Module, skip: set[str]) -> int:
    """Bytes of the state-dict entries not in `skip`, stored as they are (fp32 BN and biases)."""
    return _tensor_bytes(t for name, t in model.state_dict().items() if name not in skip)


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the state dict's tensors as stored (fp32 weights, int64 BN batch counters)."""
    return _tensor_bytes(iter(model.state_dict().values()))


def sparse_formats(weight: torch.Tensor) -> dict[str, int]:
    """Bytes of one weight tensor in each format `sparse_bytes` picks from.

    dense: fp32 values. bitmask: one bit per position (rounded up to whole bytes) and the fp32
    nonzeros. csr: the tensor as a matrix with one row per output channel, int32 row pointers
    (rows + 1), a column index per nonzero (int16 while a row has at most 65,536 columns, else
    int32) and the fp32 nonzeros. The bitmask wins down to ~94% sparsity, CSR beyond.
    """
    numel, rows = weight.numel(), weight.shape[0]
    nonzeros = int(torch.count_nonzero(weight))
    index_bytes = 2 if numel // max(1, rows) <= 2**16 else 4
    return {
        "dense": 4 * numel,
        "bitmask": math.ceil(numel / 8) + 4 * nonzeros,
        "csr": 4 * (rows + 1) + (index_bytes + 4) * nonzeros,
    }


def sparse_bytes(model: nn.Module) -> int:
    """Bytes with each prunable weight in its smallest format of `sparse_formats`, the rest as is."""
    weights = prunable_weights(model)
    stored = sum(min(sparse_formats(w.detach()).values()) for w in weights.values())
    return stored + _other_bytes(model, set(weights))


def compressed_file_bytes(model: nn.Module, path: str | Path | None = None) -> int:
    """Size of the state dict as a real `np.savez_compressed` (zip/deflate) file; written to `path` if given.

    A generic compressor's view of the same zeros: it also squeezes runs of zeros, but barely the
    fp32 nonzeros, whose mantissas look random.
    """
    arrays = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    if path is not None:
        Path(path).write_bytes(buffer.getvalue())
    return buffer.getbuffer().nbytes


# --- low-bit weight quantization --------------------------------------------------------------


def _nearest_index(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted 1-D `levels` for every value: cells of a 1-D nearest-level
    map are the intervals between midpoints, so a bucketize does it in O(n log k) time, O(n) memory."""
    return torch.bucketize(values, ((levels[1:] + levels[:-1]) / 2).contiguous())


def _channel_scale(rows: torch.Tensor, top_level: int | float) -> torch.Tensor:
    """Per-row scale putting the row's largest |w| exactly on the top level (so nothing clips);
    an all-zero row gets scale 1, harmless since its weights stay zero."""
    scale = rows.abs().amax(1, keepdim=True) / top_level
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_uniform(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight, scale per output channel) on a symmetric grid scale * {-q..q}, q = 2^(b-1) - 1.

    Symmetric keeps zero a level (pruned weights stay zero) and needs no zero point. Nothing clips,
    so every weight is within scale / 2 of its level.
    """
    qmax = 2 ** (bits - 1) - 1
    rows = weight.flatten(1)
    scale = _channel_scale(rows, qmax)
    return ((rows / scale).round().clamp(-qmax, qmax) * scale).view_as(weight), scale.flatten()


def quantize_pow2(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight, scale per output channel) with levels 0 and +-scale * 2^-k, k = 0 .. 2^(b-1) - 2.

    One sign bit and b-1 bits of exponent (a multiply becomes a shift), one exponent code meaning
    zero so that small and pruned weights are not forced up to the smallest power. The scale is
    the channel's largest |w|; each weight takes the nearest level (in value, not in log).
    """
    powers = 2 ** (bits - 1) - 1
    rows = weight.flatten(1)
    scale = _channel_scale(rows, 1.0)
    levels = torch.cat([torch.zeros(1), 2.0 ** -torch.arange(powers - 1, -1, -1, dtype=torch.float32)]).to(weight)
    magnitude = levels[_nearest_index(rows.abs() / scale, levels)]
    return (rows.sign() * magnitude * scale).view_as(weight), scale.flatten()


def quantize_kmeans(weight: torch.Tensor, bits: int, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight, sorted codebook of 2^b centroids): Deep Compression's weight sharing.

    Centroids start evenly spaced between the layer's min and max (Han et al.: linear
    initialisation keeps the rare large weights, which matter most, better than random or density
    initialisation), then `iters` Lloyd steps; a final assignment gives every weight its nearest
    centroid. An empty cluster keeps its centroid. Deterministic on CPU.
    """
    flat = weight.detach().flatten()
    centroids = torch.linspace(float(flat.min()), float(flat.max()), 2**bits, dtype=flat.dtype, device=flat.device)
    for _ in range(iters):
        index = _nearest_index(flat, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, index, flat)
        counts = torch.bincount(index, minlength=centroids.numel())
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids).sort().values
    return centroids[_nearest_index(flat, centroids)].view_as(weight), centroids


def quantize_weights(model: nn.Module, scheme: str, bits: int, kmeans_iters: int = 20) -> tuple[nn.Module, int]:
    """(a copy of `model` with every prunable weight quantized then dequantized to fp32, packed bytes).

    The copy runs as fast as the original: it shows accuracy against size, not speed. Packed bytes
    count each quantized tensor as bits * count / 8 (rounded up to whole bytes) plus its fp32
    scales or codebook, and every other state-dict tensor (BN, biases) as stored. `model` is not
    changed. Zeros survive uniform and pow2 (zero is a level); kmeans clusters them with the rest.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    low, high = BITS[scheme]
    if not low <= bits <= high:
        raise ValueError(f"{scheme} quantization needs {low} <= bits <= {high}, got {bits}")
    quantized = copy.deepcopy(model)
    weights = prunable_weights(quantized)
    packed = _other_bytes(quantized, set(weights))
    with torch.no_grad():
        for weight in weights.values():
            if scheme == "uniform":
                values, side = quantize_uniform(weight, bits)
            elif scheme == "pow2":
                values, side = quantize_pow2(weight, bits)
            else:
                values, side = quantize_kmeans(weight, bits, kmeans_iters)
            weight.copy_(values)
            packed += math.ceil(bits * weight.numel() / 8) + 4 * side.numel()
    return quantized, packed
