"""The trained full network a run starts from: the user's weights (`base.weights`) or `train-base`'s.

It is where the compressed network's weights come from (a warm-started PruningNet, or
`finetune.init=filter`), the default teacher, and the reference of every comparison. Its identity
is a digest of its weights, part of the identity of everything made from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

import search_spaces as ss
from metaprune.context import Context
from metaprune.errors import UserError
from metaprune.importance import check_full_weights
from metaprune.run_dir import BASE, PRUNINGNET
from metaprune.train import checkpoint_header, load_trained_weights

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, mtime, size) -> digest of the weights in it


def weights_file(run: Context) -> Path | None:
    return Path(run.cfg.base.weights).expanduser() if run.cfg.base.weights else None


def load_weights_file(space: ss.GraphSpace, path: Path) -> dict[str, torch.Tensor]:
    """The user's state dict, refused with one line naming what is wrong (nothing else is read)."""
    if not path.is_file():
        raise UserError(f"base.weights {path} does not exist; pass the path of your trained network's state dict")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(
            f"base.weights {path} cannot be loaded with torch.load(weights_only=True) ({first}); save a state dict: "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(weights, dict) and isinstance(weights.get("model"), dict):  # a metaprune training checkpoint
        weights = weights["model"]
    if not isinstance(weights, dict):
        raise UserError(f"base.weights {path} holds a {type(weights).__name__}, not a state dict; save model.state_dict()")
    try:
        check_full_weights(space, weights)
    except ValueError as exc:
        raise UserError(
            f"base.weights {path} is not the full {space.name!r} network of this run: {exc}; "
            + (
                "save the state dict of the model space.model builds"
                if isinstance(space.recipe.get("model"), str) and "search_spaces" not in space.recipe["model"]
                else "lay it out as search_spaces.build_subnet(space, space.largest)"
            )
        ) from None
    return weights


def base_finished(run: Context) -> bool:
    path = run.dir / BASE
    header = checkpoint_header(path) if path.exists() else None
    return header is not None and header["step"] == header["total_steps"]


def available(run: Context) -> bool:
    """Is there a trained full network: the user's file, or a finished train-base."""
    return weights_file(run) is not None or base_finished(run)


def state(run: Context) -> dict[str, torch.Tensor]:
    """The trained full network's weights (on the CPU)."""
    path = weights_file(run)
    if path is not None:
        return load_weights_file(run.base_space, path)
    if not base_finished(run):
        raise UserError(
            f"no trained full network in {run.dir}; set base.weights to your trained network's state dict, "
            f"or run `run_search.py train-base --run-dir {run.dir}` first"
        )
    return load_trained_weights(run.dir / BASE)


def model(run: Context) -> torch.nn.Module:
    """The trained full network on the run's device, in eval mode."""
    network = ss.build_subnet(run.base_space, run.base_space.largest)
    network.load_state_dict(state(run))
    return network.to(run.device).eval()


def identity(run: Context) -> str:
    """A digest of the trained network's weights (cached per file version: cheap to ask again)."""
    path = weights_file(run) or run.dir / BASE
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        digest = hashlib.sha1()
        for name, value in sorted(state(run).items()):
            digest.update(name.encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]


def pruningnet_init(run: Context) -> str:
    """`pruningnet.init` resolved: auto is trained when a trained network exists, or, once the
    PruningNet is made, what it was made as (a later train-base does not disown it)."""
    init = run.cfg.pruningnet.init
    if init != "auto":
        return init
    made = run.dir / PRUNINGNET
    if made.exists():
        return "trained" if "init" in checkpoint_header(made)["meta"].get("pruningnet", {}) else "scratch"
    return "trained" if available(run) else "scratch"


def require(run: Context, what: str) -> None:
    """A one-line error (before anything is written) when `what` needs a trained network and none exists."""
    if not available(run):
        raise UserError(
            f"{what} needs a trained full network and {run.dir} has none; set base.weights to your trained network's "
            f"state dict, or run `run_search.py train-base --run-dir {run.dir}` first"
        )


def check_normalisation(run: Context, channels: int) -> None:
    for key in ("mean", "std"):
        values: Any = getattr(run.cfg.data, key)
        if values is not None and len(values) != channels:
            raise UserError(f"data.{key} has {len(values)} values but the images have {channels} channels; give one per channel")


def read_weights(run: Context) -> None:
    """Check `base.weights` at start-up, before anything in the run directory is written."""
    path = weights_file(run)
    if path is not None:
        load_weights_file(run.base_space, path)
