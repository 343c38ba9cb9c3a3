"""One run's configuration: dataclasses with defaults, a YAML file, and `--set key=value` overrides.

The defaults run the quickstart (handwritten digits, ResNet-20, the paper's search) on a CPU in
a few minutes. Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from metaprune.errors import UserError
from metaprune.score import ScoreConfig
from metaprune.train import OptimConfig
from nas.evolution import EvolutionConfig


@dataclass
class DataConfig:
    kind: str = "digits"  # digits (bundled, no download) | folder (path/train, path/test) | synthetic
    path: str | None = None  # for kind=folder: the folder holding train/<class>/ and test/<class>/
    val_size: int = 300  # images carved from train (seeded) to score candidates; test is never searched
    split_seed: int = 0  # seed of that carve-out: keep it fixed across runs you compare
    flip: bool = False  # random horizontal flips in training (true for natural images, false for digits)
    train_subset: int = 0  # use a seeded random subset of this many training images (0 = all)


@dataclass
class SpaceConfig:
    family: str = "resnet20"  # a registered family: resnet20, resnet56, resnet50, mobilenet_v1, mobilenet_v2
    width_mult: float = 1.0  # scales every base width (the largest network of the space)


@dataclass
class PruningNetSection(OptimConfig):
    epochs: int = 20
    batch_size: int = 64
    hidden: int = 32  # width of each weight generator's hidden layer
    bn_affine: bool = False  # learnable scale/shift in the per-width BatchNorms
    min_flops: float = 0.0  # training draws configurations in [min_flops, max_flops]; <= 1 means a
    max_flops: float = 1.0  # fraction of the full model's FLOPs (the paper: no window, 0 and 1)


@dataclass
class SearchSection(EvolutionConfig):
    max_flops: float = 0.5  # the budget: <= 1 is a fraction of the full model, larger is absolute FLOPs
    min_flops: float = 0.0  # optional lower bound, same units


@dataclass
class FinetuneSection(OptimConfig):
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    label_smoothing: float = 0.0
    init: str = "inherit"  # inherit: start from the generated weights; scratch: random init (the paper)


@dataclass
class RunConfig:
    name: str = "quickstart"  # the default run directory is runs/<name>/
    seed: int = 0  # seeds training; runs with equal configs and seeds give equal results
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default)
    progress: bool = True  # progress bars on stderr
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    pruningnet: PruningNetSection = field(default_factory=PruningNetSection)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    search: SearchSection = field(default_factory=SearchSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Coerce ints to floats where a float is expected; reject anything else that does not fit."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and isinstance(value, option):
            return value
    names = " or ".join("null" if o is type(None) else o.__name__ for o in options)
    raise UserError(f"config key {key!r} must be {names}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise UserError(
                f"unknown config key {path!r}; known keys{' in ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(fields))}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} must be a mapping of its keys, got {value!r}")
            kwargs[key] = _build(hint, value, f"{path}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _check_type(path, value, hint)
    return cls(**kwargs)


def _set(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise UserError(f"--set needs key=value, got {override!r} (for example --set search.max_flops=0.3)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then each `key=value` override, validated as a whole."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist; check the --config path") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, (dict, type(None))):
            raise UserError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides or []:
        _set(data, override)
    cfg: RunConfig = _build(RunConfig, data, "")
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    result: RunConfig = _build(RunConfig, data, "")
    return result


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
