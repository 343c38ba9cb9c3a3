"""Unstructured pruning counts and masks, storage formulas, and each quantizer's promise."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces as ss
from metaprune import compress as cp
from metaprune.config import _field_comments
from metaprune.data import Normalizer, synthetic
from metaprune.errors import UserError
from metaprune.train import OptimConfig, train


def small_subnet(init_seed: int = 0) -> nn.Module:
    """One random-width half-width ResNet-20 for 16x16 inputs, randomly initialised from `init_seed`."""
    space = ss.create_space("resnet20", 10, 3, 16, 0.5)
    config = ss.sample(space, np.random.default_rng(0))
    torch.manual_seed(init_seed)
    return ss.fresh_subnet(space, config)


def prunable_total(model: nn.Module) -> int:
    return sum(w.numel() for w in cp.prunable_weights(model).values())


def zero_count(model: nn.Module) -> int:
    return sum(int((w == 0).sum()) for w in cp.prunable_weights(model).values())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_pruning_zeroes_exactly_the_requested_count(sparsity: float) -> None:
    model = small_subnet()
    total = prunable_total(model)
    masks = cp.magnitude_prune(model, sparsity)
    assert zero_count(model) == 0  # computing masks leaves the model alone
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    cp.apply_masks(model, masks)
    assert zero_count(model) == round(sparsity * total)
    assert cp.sparsity_of(model) == pytest.approx(round(sparsity * total) / total)


def test_ties_are_broken_by_position_and_the_count_stays_exact() -> None:
    linear, conv = nn.Linear(7, 5), nn.Conv2d(3, 4, 3)
    model = nn.Sequential(linear, conv)
    with torch.no_grad():
        for w in cp.prunable_weights(model).values():
            w.fill_(0.25)
        conv.weight[0].fill_(-0.5)  # a second tie group, larger
    total = prunable_total(model)  # 35 + 108; the -0.5 entries are flat positions 35 to 61
    order = [i for i in range(total) if not 35 <= i < 62] + list(range(35, 62))  # smaller first, then by position
    for sparsity in (0.3, 0.61, 0.95):
        masks = cp.magnitude_prune(model, sparsity)
        pruned = torch.cat([~m.flatten() for m in masks.values()])
        n = round(sparsity * total)
        assert int(pruned.sum()) == n and bool(pruned[order[:n]].all())
        assert all(torch.equal(a, b) for a, b in zip(masks.values(), cp.magnitude_prune(model, sparsity).values()))


def test_threshold_is_global_so_layers_end_with_different_sparsities() -> None:
    model = small_subnet()
    masks = cp.magnitude_prune(model, 0.5)
    weights = cp.prunable_weights(model)
    pruned = torch.cat([weights[k].detach().abs()[~m] for k, m in masks.items()])
    kept = torch.cat([weights[k].detach().abs()[m] for k, m in masks.items()])
    assert pruned.max() <= kept.min()
    per_layer = [1 - m.float().mean().item() for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.2, per_layer


def test_masks_survive_sgd_with_momentum_and_weight_decay() -> None:
    conv = nn.Conv2d(3, 8, 3)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    masks = cp.magnitude_prune(model, 0.6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    with cp.MaskedTraining(model, masks):  # the gradient hooks alone, no forward wrapper
        before = conv.weight.detach().clone()
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            assert cp.sparsity_of(model) == pytest.approx(0.6, abs=1e-3)
    kept = masks["0.weight"]
    assert not torch.equal(conv.weight[kept], before[kept])  # kept weights did train
    assert all(torch.equal(cp.prunable_weights(model)[k] != 0, m) for k, m in masks.items())


def masked_finetune(checkpoint: Path, until_step: int | None) -> tuple[nn.Module, cp.Masks]:
    """Fine-tune a pruned subnet with the project's loop; masks recomputed from the starting weights."""
    model = small_subnet(1)
    masks = cp.magnitude_prune(model, 0.7)
    splits = synthetic(n=64, classes=4, size=16, seed=0)
    cfg = OptimConfig(epochs=2, batch_size=16, lr=0.05, checkpoint_every=3)
    with cp.MaskedTraining(model, masks) as masked:
        train(
            model,
            masked.wrap(lambda x, _step: model(x)),
            splits.train,
            Normalizer.fit(splits.train.images),
            cfg,
            seed=0,
            checkpoint=checkpoint,
            progress=False,
            until_step=until_step,
        )
    return model, masks


def test_masks_survive_the_training_loop_resume_and_a_state_dict_round_trip(tmp_path: Path) -> None:
    straight, masks = masked_finetune(tmp_path / "straight.pt", None)
    masked_finetune(tmp_path / "resumed.pt", 5)  # stopped at step 5 of 8, then resumed
    resumed, _ = masked_finetune(tmp_path / "resumed.pt", None)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    total = prunable_total(straight)
    assert zero_count(straight) == round(0.7 * total)
    reloaded = small_subnet(2)
    reloaded.load_state_dict(torch.load(tmp_path / "straight.pt", weights_only=True)["model"])
    assert zero_count(reloaded) == round(0.7 * total)
    assert all(torch.equal(cp.masks_from_zeros(reloaded)[k], m) for k, m in masks.items())


def test_sparse_bytes_formula_on_a_tiny_linear() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 0, 3, 0], [4, 5, 0, 6]]))
    # 12 positions, 6 nonzeros: bitmask 2 + 6 * 4; csr 4 * 4 row pointers + 6 * (2 + 4); dense 12 * 4
    assert cp.sparse_formats(layer.weight) == {"dense": 48, "bitmask": 26, "csr": 52}
    assert cp.dense_bytes(layer) == 48 + 12
    assert cp.sparse_bytes(layer) == 26 + 12  # bias stays fp32


def test_sparse_storage_is_smaller_at_half_sparsity_and_beyond(tmp_path: Path) -> None:
    model = small_subnet()
    dense, dense_file = cp.dense_bytes(model), cp.compressed_file_bytes(model)
    assert cp.sparse_bytes(model) == dense  # nothing is zero: every tensor stays dense
    previous = dense
    for sparsity in (0.5, 0.8, 0.97):
        cp.apply_masks(model, cp.magnitude_prune(model, sparsity))
        assert cp.sparse_bytes(model) < previous
        previous = cp.sparse_bytes(model)
    assert cp.compressed_file_bytes(model, tmp_path / "w.npz") == (tmp_path / "w.npz").stat().st_size < dense_file


def levels_are_nearest(weight: torch.Tensor, quantized: torch.Tensor, levels: torch.Tensor) -> None:
    """Every quantized value is one of `levels` and no level is nearer to the original weight."""
    gap = (quantized.flatten()[:, None] - levels[None, :]).abs().min(1).values
    assert gap.max() <= 1e-6 * levels.abs().max()
    best = (weight.flatten()[:, None] - levels[None, :]).abs().min(1).values
    assert ((weight - quantized).abs().flatten() - best).max() <= 1e-6 * levels.abs().max()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_error_is_at_most_half_a_step(bits: int) -> None:
    weight = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(bits))
    quantized, scale = cp.quantize_uniform(weight, bits)
    qmax = 2 ** (bits - 1) - 1
    error = (weight - quantized).abs().flatten(1)
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()
    for row, s, w in zip(quantized.flatten(1), scale, weight.flatten(1)):
        assert row.unique().numel() <= 2**bits
        levels_are_nearest(w, row, s * torch.arange(-qmax, qmax + 1))


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_pow2_levels_are_signed_powers_of_two_of_the_channel_scale(bits: int) -> None:
    weight = torch.randn(6, 40, generator=torch.Generator().manual_seed(bits))
    weight[0, :5] = 0.0
    quantized, scale = cp.quantize_pow2(weight, bits)
    powers = 2.0 ** -torch.arange(2 ** (bits - 1) - 1)
    assert torch.equal(scale, weight.abs().amax(1))
    assert bool((quantized[0, :5] == 0).all())
    for row, s, w in zip(quantized, scale, weight):
        assert row.unique().numel() <= 2**bits
        levels_are_nearest(w, row, torch.cat([-s * powers, torch.zeros(1), s * powers]))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_kmeans_maps_each_weight_to_its_nearest_centroid(bits: int) -> None:
    weight = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(bits)) ** 3  # heavy tails
    quantized, codebook = cp.quantize_kmeans(weight, bits, iters=10)
    assert codebook.numel() == 2**bits and quantized.unique().numel() <= 2**bits
    levels_are_nearest(weight, quantized, codebook)
    first_assignment = cp.quantize_kmeans(weight, bits, iters=0)[0]
    assert (weight - quantized).pow(2).sum() <= (weight - first_assignment).pow(2).sum()  # Lloyd only improves
    assert torch.equal(quantized, cp.quantize_kmeans(weight, bits, iters=10)[0])  # deterministic


@pytest.mark.parametrize(
    ("scheme", "bits", "expected"), [("uniform", 4, 8 + 12 + 12), ("pow2", 3, 6 + 12 + 12), ("kmeans", 2, 4 + 16 + 12)]
)
def test_packed_size_formula_on_a_tiny_linear(scheme: str, bits: int, expected: int) -> None:
    # 15 weights at `bits` each, rounded up to bytes; 3 fp32 channel scales or 2^bits fp32 centroids; 3 fp32 biases
    assert cp.quantize_weights(nn.Linear(5, 3), scheme, bits)[1] == expected


@pytest.mark.parametrize("scheme", cp.SCHEMES)
def test_quantize_weights_returns_a_changed_copy_and_leaves_the_model_alone(scheme: str) -> None:
    model = small_subnet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized, packed = cp.quantize_weights(model, scheme, 4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(w.unique().numel() < before[k].numel() for k, w in cp.prunable_weights(quantized).items())
    assert packed < cp.dense_bytes(model) / 5
    x = torch.randn(2, 3, 16, 16)
    assert quantized.eval()(x).shape == model(x).shape


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="sparsity must be in"):
        cp.magnitude_prune(small_subnet(), 1.5)
    with pytest.raises(ValueError, match="2 <= bits <= 8, got 1"):
        cp.quantize_weights(nn.Linear(2, 2), "uniform", 1)
    with pytest.raises(ValueError, match="scheme must be one of"):
        cp.quantize_weights(nn.Linear(2, 2), "log", 4)
    with pytest.raises(ValueError, match="does not fit"):
        cp.apply_masks(nn.Linear(2, 2), {"weight": torch.ones(3, 2, dtype=torch.bool)})


def test_config_defaults_are_valid_documented_and_checked() -> None:
    cp.check_compress_config(cp.CompressConfig())
    comments = _field_comments(cp.CompressConfig)
    assert {f.name for f in dataclasses.fields(cp.CompressConfig)} == set(comments)
    bad: list[dict[str, Any]] = [
        {"sparsity": -0.1},
        {"weight_scheme": "log"},
        {"weight_bits": 9},
        {"weight_scheme": "pow2", "weight_bits": 1},
    ]
    for change in bad:
        with pytest.raises(UserError, match="compress."):
            cp.check_compress_config(dataclasses.replace(cp.CompressConfig(), **change))
