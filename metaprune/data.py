"""Image data held in memory as uint8 tensors, with batching, augmentation and normalisation.

Sources: scikit-learn's bundled handwritten digits (no download), a class-per-folder image tree
(`root/train/<class>/*.jpg`, `root/test/...`), and a small synthetic set for tests. Images are
decoded once; batches are sliced from memory, so an epoch costs no file I/O.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metaprune.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class ImageData:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, size) of the (square) images."""
        return self.images.shape[1], self.images.shape[2]

    def subset(self, index: torch.Tensor) -> ImageData:
        return ImageData(self.images[index], self.labels[index], self.classes)


@dataclass
class Splits:
    train: ImageData
    test: ImageData


def split(data: ImageData, held_out: int, seed: int) -> tuple[ImageData, ImageData]:
    """(rest, held_out) with a fixed seeded permutation: the same split on every run."""
    if not 0 < held_out < len(data):
        raise UserError(f"cannot hold out {held_out} of {len(data)} images; choose 0 < val_size < {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[held_out:]), data.subset(order[:held_out])


def load_digits(seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled with the package), 20% held out as test."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    data = ImageData(images, torch.from_numpy(bunch.target.astype(np.int64)), [str(c) for c in range(10)])
    train, test = split(data, len(data) // 5, seed)
    return Splits(train, test)


def synthetic(n: int = 512, classes: int = 4, size: int = 16, channels: int = 3, seed: int = 0) -> Splits:
    """Learnable toy images: each class is a noisy copy of its own random pattern."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, channels, size, size, generator=gen)
    labels = torch.randint(classes, (n,), generator=gen)
    noise = torch.rand(n, channels, size, size, generator=gen)
    images = ((0.6 * patterns[labels] + 0.4 * noise) * 255).round().to(torch.uint8)
    data = ImageData(images, labels, [f"class{c}" for c in range(classes)])
    train, test = split(data, n // 4, seed + 1)
    return Splits(train, test)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}); remove or replace it") from None


def _decode_rgb(root: Path, classes: list[str] | None) -> tuple[np.ndarray, list[int], list[str]]:
    """All images under `root/<class>/` as one N x H x W x 3 uint8 array (square, one size)."""
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; pass the folder that holds train/ and test/ (data.path)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = classes if classes is not None else found
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).glob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not found or not files:
        raise UserError(f"data folder {root} holds no images in class folders; expected {root}/<class>/*.jpg")
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:  # PIL decodes without the GIL
        arrays = list(pool.map(lambda item: _read_rgb(item[0]), files))
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) != 1 or sizes[0][0] != sizes[0][1]:
        raise UserError(f"images in {root} have sizes {sizes[:3]}; resize them to one square size first")
    return np.stack(arrays), [label for _, label in files], classes


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _to_tensor(rgb: np.ndarray, gray: bool) -> torch.Tensor:
    images = rgb[..., :1] if gray else rgb
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def load_folder(path: str | Path) -> Splits:
    """`path/train/<class>/*` and `path/test/<class>/*` (class names taken from train).

    Both splits get one channel only when every image of both is gray, and must share one size.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; pass the folder that holds train/ and test/ (data.path)")
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise UserError(
                f"data folder {root} has no {part}/ subfolder; expected {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg"
            )
    train, train_labels, classes = _decode_rgb(root / "train", None)
    test, test_labels, _ = _decode_rgb(root / "test", classes)
    if train.shape[1:] != test.shape[1:]:
        raise UserError(
            f"train images are {train.shape[1]}x{train.shape[2]} but test images {test.shape[1]}x{test.shape[2]}; use one size"
        )
    gray = _is_gray(train) and _is_gray(test)
    return Splits(
        ImageData(_to_tensor(train, gray), torch.tensor(train_labels), classes),
        ImageData(_to_tensor(test, gray), torch.tensor(test_labels), classes),
    )


@functools.lru_cache(maxsize=1)
def _load_folder_once(root: Path, stamp: tuple[int, ...]) -> Splits:
    """Decoding CIFAR-10 takes 15-20 s: stages and tests in one process share one decoded copy
    (keyed by the folders' modification times; callers never modify the tensors in place)."""
    return load_folder(root)


def load_dataset(kind: str, path: str | None = None, seed: int = 0) -> Splits:
    if kind == "digits":
        return load_digits(seed)
    if kind == "synthetic":
        return synthetic(seed=seed)
    if kind == "folder":
        if not path:
            raise UserError("data.kind=folder needs data.path, the folder holding train/ and test/")
        root = Path(path).resolve()
        stamp = tuple((root / part).stat().st_mtime_ns if (root / part).is_dir() else 0 for part in ("train", "test"))
        return _load_folder_once(root, stamp)
    if kind == "tensors":
        raise UserError("data.kind=tensors is the data handed to metaprune.prune(...); on the command line use digits or folder")
    raise UserError(f"unknown data.kind {kind!r}; choose digits, folder or synthetic")


@dataclass
class Normalizer:
    """Per-channel mean and std computed on the training images; applied to uint8 batches."""

    mean: list[float]
    std: list[float]

    @staticmethod
    def fit(images: torch.Tensor) -> Normalizer:
        pixels = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)
        return Normalizer(pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float().div(255) - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random crop after zero-padding by 1/8 of the size, and optional horizontal flip."""
    n, _, size, _ = images.shape
    pad = max(1, size // 8)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(size)).view(n, 1, size, 1)
    cols = (offsets[:, 1, None] + torch.arange(size)).view(n, 1, 1, size)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    out = padded[batch, channel, rows, cols]
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        out[flipped] = out[flipped].flip(-1)
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches of one epoch (shuffled by (seed, epoch), last partial batch dropped)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
