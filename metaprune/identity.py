"""What each artifact of a run depends on: its identity, stored in it and checked on reuse.

An artifact made under other settings is refused (naming the settings that changed) rather than
silently reused or overwritten. Settings that cannot change a result (checkpoint intervals,
evaluation batch sizes, where candidates are scored) are left out, and so are settings at the value
that means "as before they existed", so that older runs keep their identity and resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import search_spaces as ss
from metaprune import settings, trained
from metaprune.config import PruningNetSection
from metaprune.context import Context
from metaprune.distill import parse_weights, teacher_paths
from metaprune.pruningnet import PruningNetConfig
from metaprune.run_dir import BASE, FINETUNE, RECORD

WARM_LR_FACTOR = 0.2  # a warm PruningNet's automatic rate, as a fraction of finetune.lr (see pruningnet_optim)
FINETUNE_SETTINGS = "finetune-settings"  # what any fine-tune depends on, but for the winner


def digest(data: Any, length: int = 12) -> str:
    """The one digest of identities: SHA-1 of the canonical JSON."""
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


def file_digest(path: Path) -> str:
    """A digest of a file's (or a directory's files') bytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    hashed = hashlib.sha1()
    for file in files:
        hashed.update(file.read_bytes())
    return hashed.hexdigest()[:16]


def _settings(ctx: Context) -> dict[str, Any]:
    """The config as identities see it: runtime settings out (each field says so, `metaprune.settings`),
    the data path resolved, settings at their "as before they existed" value out."""
    full = ctx.cfg.to_dict()
    for item in dataclasses.fields(ctx.cfg):
        section = getattr(ctx.cfg, item.name)
        if dataclasses.is_dataclass(section):
            full[item.name] = settings.without(section, full[item.name], settings.RUNTIME, settings.FILE)
    data = full["data"]
    data["path"] = str(Path(data["path"]).resolve()) if data["kind"] == "folder" and data["path"] else None
    unset_keys = (("data", "mean", None), ("data", "std", None), ("space", "channel_multiple", 1), ("space", "model", ""))
    for section_name, key, unset in unset_keys:
        if full[section_name].get(key, unset) == unset:
            full[section_name].pop(key, None)
    if data["kind"] == "tensors":  # handed to metaprune.prune: their content is their identity
        data["digest"] = data_digest(ctx.splits)
    if isinstance(ctx.base_space, ss.GraphSpace):  # the user's code, as traced: an edit to it is a new space
        full["space"] = {"graph": ctx.base_space.digest(), "channel_multiple": ctx.cfg.space.channel_multiple}
    return full


def data_digest(splits: Any) -> str:
    digest = hashlib.sha256()
    for part in (splits.train, splits.test):
        digest.update(part.images.contiguous().numpy().tobytes())
        digest.update(part.labels.contiguous().numpy().tobytes())
        digest.update(repr(part.classes).encode())
    return digest.hexdigest()[:16]


def meta(ctx: Context, artifact: str, winner: ss.Config | None = None) -> dict[str, Any]:
    """The settings an artifact's content depends on (BASE, PRUNINGNET, RECORD, FINETUNE, FINETUNE_SETTINGS)."""
    full = _settings(ctx)
    # `amp` is left out: it is on only where training runs on a GPU, so in an identity it would refuse
    # a GPU-trained PruningNet to a search on a CPU, and a run started on a CPU on a GPU.
    if artifact == BASE:
        return {key: full[key] for key in ("seed", "data", "space")}
    full["pruningnet"] = _pruningnet_identity(ctx, full["pruningnet"])
    found = {key: full[key] for key in ("seed", "data", "space", "pruningnet")}
    if artifact in (RECORD, FINETUNE, FINETUNE_SETTINGS):
        found["score"] = full["score"]
        if not 0 < full["score"]["val_images"] < ctx.cfg.data.val_size:  # the whole split: as before the setting
            del found["score"]["val_images"]  # existed, so such runs resume
    if artifact in (FINETUNE, FINETUNE_SETTINGS):
        found["finetune"] = settings.without(ctx.cfg.finetune, full["finetune"], settings.CHOICE)
        if ctx.cfg.finetune.init == "filter":
            found["finetune"]["trained"] = trained.identity(ctx)  # pruned from the trained network
    if artifact == FINETUNE:
        found["winner"] = list(winner or ())
        distill = distill_identity(ctx)
        if distill is not None:  # (an undistilled fine-tune keeps the identity it had before distillation existed)
            found["distill"] = distill
    return found


def base_meta(ctx: Context) -> dict[str, Any]:
    """train-base's checkpoint: the data, the space and the `base` training settings."""
    return {**meta(ctx, BASE), "base": _settings(ctx)["base"]}  # (base.pt exists only without base.weights)


def _pruningnet_identity(ctx: Context, section: dict[str, Any]) -> dict[str, Any]:
    """The PruningNet's settings as resolved (init, rate), with the trained network it starts from."""
    section = {**section, "lr": pruningnet_optim(ctx).lr}
    if trained.pruningnet_init(ctx) == "scratch":  # as before warm starts existed, so such runs resume
        del section["init"], section["ranking"]
        return section
    section.update(init="trained", bn_affine=True, trained=trained.identity(ctx))
    if ctx.cfg.distill.enabled:
        section["distill"] = {"alpha": ctx.cfg.distill.alpha, "temperature": ctx.cfg.distill.temperature}
    return section


def pruningnet_optim(ctx: Context) -> PruningNetSection:
    """`pruningnet` with its learning rate resolved: 0 is 0.1 from scratch, a fifth of finetune.lr when warm.

    Warm, every step trains another random width on the shared trained weights: on CIFAR-10
    ResNet-20, 60 steps at 0.05 took the 50%-FLOPs proxy from 58% to 20%, while 0.01 raised it
    to 62% and random layer-wise widths from about 21% to 51% (0.002: 66%, 46%)."""
    cfg = ctx.cfg.pruningnet
    if cfg.lr > 0:
        return cfg
    warm = trained.pruningnet_init(ctx) == "trained"
    return dataclasses.replace(cfg, lr=WARM_LR_FACTOR * ctx.cfg.finetune.lr if warm else 0.1)


def pruningnet_config(ctx: Context) -> PruningNetConfig:
    warm = trained.pruningnet_init(ctx) == "trained"  # the trained BN's scale and shift need affine BNs
    return PruningNetConfig(ctx.cfg.pruningnet.hidden, ctx.cfg.pruningnet.bn_affine or warm)


def finetune_path(ctx: Context, winner: ss.Config) -> Path:
    """One checkpoint per (winner, fine-tune settings): searching again never clobbers one."""
    return ctx.dir / FINETUNE / f"{digest(meta(ctx, FINETUNE, winner))}.pt"


def assistant_config(space: ss.GeneSpace, width: float) -> ss.Config:
    """The distillation assistant: every gene at the choice nearest to `width` x its full width."""
    return ss.uniform(space, width, rounding="nearest")


# -- distillation -----------------------------------------------------------------------------------
def _distill(ctx: Context) -> dict[str, float]:
    return {"alpha": ctx.cfg.distill.alpha, "temperature": ctx.cfg.distill.temperature}


def _direct_teachers(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg.distill
    paths = teacher_paths(cfg)
    if not paths:
        if trained.weights_file(ctx) is not None:
            return {"base_weights": trained.identity(ctx)}
        return {"base": digest(base_meta(ctx))}
    return {"files": [file_digest(path) for path in paths], "weights": parse_weights(cfg.teacher_weights, len(paths))}


def assistant_identity(ctx: Context) -> dict[str, Any]:
    config = assistant_config(ctx.space, ctx.cfg.distill.assistant_width)
    return {**meta(ctx, FINETUNE_SETTINGS), "teachers": _direct_teachers(ctx), **_distill(ctx), "assistant": list(config)}


def distill_identity(ctx: Context) -> dict[str, Any] | None:
    """What a student's training depends on (None without distillation): cheap, nothing is loaded."""
    if not ctx.cfg.distill.enabled:
        return None
    if ctx.cfg.distill.assistant_width == 0:
        return {**_direct_teachers(ctx), **_distill(ctx)}
    return {"assistant": digest(assistant_identity(ctx)), **_distill(ctx)}


def quantize_identity(source: str, config: ss.Config, ctx: Context) -> dict[str, Any]:
    """A quantize work directory: the model (named by its weights' source) and the settings that shape its files."""
    settings = ctx.cfg.to_dict()
    return {"model": source, "config": list(config)} | {key: settings[key] for key in ("quantize", "compress", "latency")}
