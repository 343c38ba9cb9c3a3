"""Data loading, augmentation, configuration parsing, budgets and durable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaprune.config import load_config
from metaprune.data import augment, load_dataset, load_digits, load_folder, split
from metaprune.errors import UserError
from metaprune.io import atomic_write_text, safe_torch_load
from nas.budget import resolve_flops
from tests.conftest import CIFAR


def write_folder(root: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    for part, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (root / part / name).mkdir(parents=True)
            for i in range(count):
                shape = (12, 12, 3) if mode == "RGB" else (12, 12)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / part / name / f"{i}.png")


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_folder_loader_decodes_into_memory(tmp_path: Path, mode: str, channels: int) -> None:
    write_folder(tmp_path, mode)
    splits = load_folder(tmp_path)
    assert splits.train.images.shape == (6, channels, 12, 12) and splits.train.images.dtype == torch.uint8
    assert splits.train.classes == ["cat", "dog"] and splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png"))
    assert np.array_equal(splits.train.images[0].permute(1, 2, 0).squeeze(-1).numpy(), first)
    assert len(splits.test) == 4


def test_folder_channels_follow_all_images_and_sizes_must_agree(tmp_path: Path) -> None:
    write_folder(tmp_path / "mixed", "L")
    Image.fromarray(np.full((12, 12, 3), (200, 10, 10), dtype=np.uint8)).save(tmp_path / "mixed" / "test" / "dog" / "9.png")
    splits = load_folder(tmp_path / "mixed")
    assert splits.train.images.shape[1] == splits.test.images.shape[1] == 3  # one colour image makes both RGB
    write_folder(tmp_path / "sizes", "RGB")
    Image.fromarray(np.zeros((12, 16, 3), dtype=np.uint8)).save(tmp_path / "sizes" / "train" / "cat" / "9.png")
    with pytest.raises(UserError, match="one square size"):
        load_folder(tmp_path / "sizes")
    write_folder(tmp_path / "broken", "RGB")
    (tmp_path / "broken" / "train" / "cat" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.jpg is not a readable image"):
        load_folder(tmp_path / "broken")


def test_digits_are_embedded_and_split_is_fixed() -> None:
    splits = load_digits()
    assert splits.train.shape == (1, 8) and len(splits.train) + len(splits.test) == 1797
    a, b = split(splits.train, 100, seed=3), split(splits.train, 100, seed=3)
    assert torch.equal(a[1].labels, b[1].labels) and len(a[0]) == len(splits.train) - 100


def test_augment_crops_within_padding_and_flips() -> None:
    images = torch.arange(2 * 8 * 8, dtype=torch.uint8).view(2, 1, 8, 8)
    out = augment(images, torch.Generator().manual_seed(0), flip=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    values = set(images.unique().tolist()) | {0}
    assert set(out.unique().tolist()) <= values


@pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10 is absent")
def test_cifar10_folder_has_the_standard_splits() -> None:
    splits = load_dataset("folder", str(CIFAR))  # decoded once per process (test_cifar10 reuses it)
    assert splits.train.images.shape == (50000, 3, 32, 32) and len(splits.test) == 10000
    assert torch.bincount(splits.train.labels).tolist() == [5000] * 10


def test_config_overrides_and_types() -> None:
    cfg = load_config(None, ["search.max_flops=2e6", "pruningnet.epochs=3", "data.path=/data", "space.width_mult=1"])
    assert cfg.search.max_flops == 2e6 and cfg.pruningnet.epochs == 3 and cfg.data.path == "/data"
    assert isinstance(cfg.space.width_mult, float)
    with pytest.raises(UserError, match="'pruningnet.epochs' must be int"):
        load_config(None, ["pruningnet.epochs=many"])
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["search.max_flops"])
    bad = {
        "pruningnet.epochs=0": ">= 1",
        "pruningnet.checkpoint_every=0": ">= 1",
        "search.parents=60": "search.population",
        "search.mutation_prob=1.5": "in \\[0, 1\\]",
        "space.width_mult=.inf": "space.width_mult",
        "seed=-1": "2\\*\\*32",
        "finetune.schedule=steps": "cosine",
        "device=tpu": "auto, cpu or cuda",
    }
    for override, message in bad.items():
        with pytest.raises(UserError, match=message):
            load_config(None, [override])


def test_budget_fraction_or_absolute() -> None:
    assert resolve_flops(0.5, 1000) == 500
    assert resolve_flops(1, 1000) == 1000
    assert resolve_flops(250, 1000) == 250
    with pytest.raises(ValueError, match=">= 0"):
        resolve_flops(-1, 1000)


def test_atomic_write_and_safe_load(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and list(tmp_path.iterdir()) == [path]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        safe_torch_load(bad)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_load(path: Path) -> None:
    assert load_config(path).name


def test_importing_the_packages_starts_neither_ray_nor_cuda() -> None:
    import subprocess
    import sys

    code = (
        "import sys, nas, nas.evolution, nas.study, nas.search, nas.searchers, nas.executors, metaprune.pipeline\n"
        "import search_spaces, torch, run_search\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
