"""One run's configuration: dataclasses with defaults, a YAML file, and `--set key=value` overrides.

The defaults run the quickstart (handwritten digits, ResNet-20, the paper's search) on a CPU in
a few minutes. Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from metaprune.compress import CompressConfig
from metaprune.deploy import QuantizeConfig
from metaprune.distill import DistillConfig
from metaprune.errors import UserError
from metaprune.latency import LatencyConfig
from metaprune.score import ScoreConfig
from metaprune.settings import choice, file, runtime
from metaprune.train import OptimConfig

PRUNINGNET_INITS = ("auto", "trained", "scratch")
# settings that moved into a searcher's own section: the old keys keep working (YAML and --set)
MOVED = {
    **{
        ("search", key): ("search", "evolution", key)
        for key in ("parents", "mutations", "crossovers", "mutation_prob", "include_uniform")
    },
    ("search", "batch"): ("search", "rounds", "batch"),
}
FINETUNE_INITS = ("inherit", "filter", "scratch")


@dataclass
class DataConfig:
    kind: str = "digits"  # digits (bundled, no download) | folder (path/train, path/test) | synthetic
    path: str | None = None  # for kind=folder: the folder holding train/<class>/ and test/<class>/
    val_size: int = 300  # images carved from train (seeded) to score candidates; test is never searched
    split_seed: int = 0  # seed of that carve-out: keep it fixed across runs you compare
    flip: bool = False  # random horizontal flips in training (true for natural images, false for digits)
    train_subset: int = 0  # use a seeded random subset of this many training images (0 = all)
    mean: list[float] | None = None  # per-channel input mean the model expects (null: fitted on the training images)
    std: list[float] | None = None  # per-channel input std, with data.mean (ImageNet's for a trained torchvision model)


@dataclass
class SpaceConfig:
    family: str = "resnet20"  # a registered family: resnet20, resnet56, resnet50, mobilenet_v1, mobilenet_v2
    width_mult: float = 1.0  # scales every base width (the largest network of the space)
    channel_multiple: int = 8  # every gene's widths are multiples of this (1: the paper's grid); 8 runs faster, see README


@dataclass
class BaseSection(OptimConfig):
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    weights: str = file("")  # your trained full network's state dict (as build_subnet(space, space.largest)); replaces train-base


@dataclass
class PruningNetSection(OptimConfig):
    epochs: int = 20  # with init=trained, 0 is EagleEye: the pruned trained weights scored with adaptive BN
    batch_size: int = 64
    lr: float = 0.0  # 0 = auto: 0.1 from scratch, finetune.lr / 5 when warm (higher washes the trained weights out)
    init: str = "auto"  # trained: from the trained network (base.weights, train-base) | scratch | auto: trained if one exists
    ranking: str = "l1"  # channel importance that orders the trained network: l1 | l1_mean | bn (benchmarks/bench_ranking.py)
    hidden: int = 32  # width of each weight generator's hidden layer
    bn_affine: bool = False  # learnable scale/shift in the per-width BatchNorms (always on when warm: the trained BN's)
    min_flops: float = 0.0  # lower end of the FLOPs window training configurations are drawn from (<= 1: fraction)
    max_flops: float = 1.0  # upper end of that window (the paper trains on every width: 0 and 1)


@dataclass
class EvolutionSection:
    """search.evolution: the paper's evolutionary search (searcher=evolution only)."""

    parents: int = 10  # best candidates that mutations and crossovers start from
    mutations: int = 25  # mutants of the parents per generation
    crossovers: int = 25  # uniform crossovers of two parents per generation
    mutation_prob: float = 0.1  # chance that a mutation resamples each gene
    include_uniform: bool = True  # the first generation holds the uniformly scaled network under the budget


@dataclass
class RoundsSection:
    """search.rounds: searchers that ask a fixed number of trials per round (searcher=tpe, random)."""

    batch: int = 10  # trials per round; fixed for reproducibility (evolution and nsga2 ask population per round)


@dataclass
class SearchSection:
    max_flops: float = 0.5  # the budget: <= 1 is a fraction of the full model, larger is absolute FLOPs
    min_flops: float = 0.0  # optional lower bound, same units
    searcher: str = "evolution"  # evolution (the paper) | tpe | nsga2 (accuracy/FLOPs front) | random
    population: int = 50  # candidates per generation (evolution, nsga2); every searcher scores population x generations
    generations: int = 20  # with population, the number of candidates scored
    seed: int = 0  # seeds the search's own random choices
    evolution: EvolutionSection = field(default_factory=EvolutionSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    executor: str = runtime("inprocess")  # inprocess | ray (a pool of Ray actors, one per GPU or sharing the CPUs)
    workers: int = runtime(2)  # Ray actors scoring candidates (executor=ray)
    ray_address: str = runtime("")  # join this Ray cluster (executor=ray); empty: RAY_ADDRESS if set, else start Ray locally
    storage: str = runtime("")  # Optuna storage URL for the studies (e.g. postgresql://...); empty: RUN_DIR/study.journal
    max_latency_ms: float = 0.0  # > 0: also a latency budget, predicted by a per-layer table measured here (section latency)


@dataclass
class FinetuneSection(OptimConfig):
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    label_smoothing: float = 0.0
    init: str = "inherit"  # inherit: generated weights | filter: the trained network pruned to the widths | scratch (the paper)
    top_k: int = choice(1)  # > 1: fine-tune the k best candidates as Ray Tune trials under ASHA; the survivor wins
    grace_epochs: int = choice(1)  # top_k > 1: epochs every candidate trains before ASHA may stop it
    reduction_factor: int = choice(2)  # top_k > 1: ASHA keeps the best 1/reduction_factor at each rung


@dataclass
class RunConfig:
    name: str = "quickstart"  # the default run directory is runs/<name>/
    seed: int = 0  # seeds training; runs with equal configs and seeds give equal results
    device: str = runtime("auto")  # auto (cuda when present) | cpu | cuda
    threads: int = runtime(0)  # torch CPU threads (0 = torch's default)
    amp: bool = True  # mixed precision (bf16 autocast) when training on a CUDA GPU; no effect on a CPU
    progress: bool = runtime(True)  # progress bars on stderr
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    base: BaseSection = field(default_factory=BaseSection)
    pruningnet: PruningNetSection = field(default_factory=PruningNetSection)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    search: SearchSection = field(default_factory=SearchSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Coerce ints to floats where a float is expected; reject anything else that does not fit."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if isinstance(value, list) and list[float] in options:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"config key {key!r} must be a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if isinstance(value, str) and (float in options or int in options):
        value = _parse_number(value)  # YAML reads 2e6 as a string; users mean a number
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and isinstance(value, option):
            return value
    names = " or ".join("null" if o is type(None) else "a list of numbers" if o == list[float] else o.__name__ for o in options)
    raise UserError(f"config key {key!r} must be {names}, got {value!r}")


def _parse_number(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


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
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot read value {raw!r}; quote strings and write numbers plainly") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then each `key=value` override, validated as a whole."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist; check the --config path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"config file {path} cannot be read ({exc.__class__.__name__}); pass a YAML file") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, (dict, type(None))):
            raise UserError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides or []:
        _set(data, override)
    _move_old_keys(data)
    cfg: RunConfig = _build(RunConfig, data, "")
    validate(cfg)
    return cfg


def _move_old_keys(data: dict[str, Any]) -> None:
    """An old key (search.parents) becomes its new one (search.evolution.parents); both at once is an error."""
    for (section, key), (_, sub, new_key) in MOVED.items():
        node = data.get(section)
        if not isinstance(node, dict) or key not in node:
            continue
        target = node.setdefault(sub, {})
        if not isinstance(target, dict):
            continue  # _build names the bad value
        if new_key in target and target[new_key] != node[key]:
            raise UserError(
                f"config keys '{section}.{key}' and '{section}.{sub}.{new_key}' disagree; keep only {section}.{sub}.{new_key}"
            )
        target[new_key] = node.pop(key)


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise UserError(f"config key {key!r} must be {rule}, got {value!r}")


def _check_optim(section: str, cfg: OptimConfig, pruningnet: bool = False) -> None:
    from metaprune.train import SCHEDULES

    if pruningnet:  # 0 epochs: the warm start as it is (EagleEye); 0 lr: the automatic rate
        _require(cfg.epochs >= 0, f"{section}.epochs", cfg.epochs, ">= 0 (0 only with pruningnet.init=trained)")
        _require(cfg.lr >= 0 and math.isfinite(cfg.lr), f"{section}.lr", cfg.lr, ">= 0 (0 = auto)")
    else:
        _require(cfg.epochs >= 1, f"{section}.epochs", cfg.epochs, ">= 1")
        _require(cfg.lr > 0 and math.isfinite(cfg.lr), f"{section}.lr", cfg.lr, "a positive number")
    _require(cfg.batch_size >= 2, f"{section}.batch_size", cfg.batch_size, ">= 2 (BatchNorm needs two images)")
    _require(0 <= cfg.momentum < 1, f"{section}.momentum", cfg.momentum, "in [0, 1)")
    _require(0 <= cfg.weight_decay < 1, f"{section}.weight_decay", cfg.weight_decay, "in [0, 1)")
    _require(cfg.schedule in SCHEDULES, f"{section}.schedule", cfg.schedule, f"one of {', '.join(SCHEDULES)}")
    _require(0 <= cfg.label_smoothing < 1, f"{section}.label_smoothing", cfg.label_smoothing, "in [0, 1)")
    _require(cfg.checkpoint_every >= 1, f"{section}.checkpoint_every", cfg.checkpoint_every, ">= 1")


def validate(cfg: RunConfig) -> None:
    """Check every value before any work starts, so a typo cannot cost hours of finished stages."""
    seeds = {"seed": cfg.seed, "search.seed": cfg.search.seed, "data.split_seed": cfg.data.split_seed}
    for key, seed in seeds.items():
        _require(0 <= seed < 2**32, key, seed, "in [0, 2**32)")
    _require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    _require(cfg.threads >= 0, "threads", cfg.threads, ">= 0")
    _require(cfg.data.kind in ("digits", "folder", "synthetic"), "data.kind", cfg.data.kind, "digits, folder or synthetic")
    _require(cfg.data.val_size >= 1, "data.val_size", cfg.data.val_size, ">= 1")
    _require(cfg.data.train_subset >= 0, "data.train_subset", cfg.data.train_subset, ">= 0 (0 = all)")
    wm = cfg.space.width_mult
    _require(0 < wm <= 16 and math.isfinite(wm), "space.width_mult", wm, "in (0, 16]")
    _check_optim("base", cfg.base)
    _check_optim("pruningnet", cfg.pruningnet, pruningnet=True)
    _check_optim("finetune", cfg.finetune)
    _require(1 <= cfg.pruningnet.hidden <= 4096, "pruningnet.hidden", cfg.pruningnet.hidden, "in [1, 4096]")
    _require(cfg.finetune.init in FINETUNE_INITS, "finetune.init", cfg.finetune.init, "inherit, filter or scratch")
    pn = cfg.pruningnet
    _require(pn.init in PRUNINGNET_INITS, "pruningnet.init", pn.init, "auto, trained or scratch")
    from metaprune.importance import RANKINGS

    _require(pn.ranking in RANKINGS, "pruningnet.ranking", pn.ranking, f"one of {', '.join(RANKINGS)}")
    _require(pn.epochs >= 1 or pn.init == "trained", "pruningnet.epochs", pn.epochs, ">= 1 (0 needs pruningnet.init=trained)")
    cm = cfg.space.channel_multiple
    _require(1 <= cm <= 256, "space.channel_multiple", cm, "in [1, 256] (1: the paper's grid, 8: what kernels block by)")
    for key in ("mean", "std"):
        values = getattr(cfg.data, key)
        if values is not None:
            ok = all(math.isfinite(v) for v in values) and len(values) >= 1
            _require(ok, f"data.{key}", values, "a list of numbers, one per image channel")
    both = (cfg.data.mean is None) == (cfg.data.std is None)
    _require(both, "data.std", cfg.data.std, "set together with data.mean (or both null)")
    if cfg.data.std is not None:
        _require(min(cfg.data.std) > 0, "data.std", cfg.data.std, "positive numbers")
    ft = cfg.finetune
    _require(ft.top_k >= 1, "finetune.top_k", ft.top_k, ">= 1")
    _require(1 <= ft.grace_epochs <= ft.epochs, "finetune.grace_epochs", ft.grace_epochs, "in [1, finetune.epochs]")
    _require(ft.reduction_factor >= 2, "finetune.reduction_factor", ft.reduction_factor, ">= 2")
    _check_distill(cfg.distill)
    _check_quantize(cfg.quantize)
    from metaprune.compress import check_compress_config

    check_compress_config(cfg.compress)
    _require(cfg.score.calib_batch_size >= 2, "score.calib_batch_size", cfg.score.calib_batch_size, ">= 2")
    _require(
        cfg.score.calib_images >= cfg.score.calib_batch_size,
        "score.calib_images",
        cfg.score.calib_images,
        ">= score.calib_batch_size",
    )
    _require(cfg.score.val_images >= 0, "score.val_images", cfg.score.val_images, ">= 0 (0: the whole validation split)")
    _require(cfg.score.eval_batch_size >= 1, "score.eval_batch_size", cfg.score.eval_batch_size, ">= 1")
    search = cfg.search
    from nas.searchers import SEARCHERS

    _require(search.searcher in SEARCHERS, "search.searcher", search.searcher, f"one of {', '.join(SEARCHERS)}")
    _require(search.rounds.batch >= 1, "search.rounds.batch", search.rounds.batch, ">= 1")
    lat = search.max_latency_ms
    _require(lat >= 0 and math.isfinite(lat), "search.max_latency_ms", lat, ">= 0 (0 = no latency budget)")
    for key in ("batch", "threads", "runs"):
        _require(getattr(cfg.latency, key) >= 1, f"latency.{key}", getattr(cfg.latency, key), ">= 1")
    _require(cfg.latency.warmup >= 0, "latency.warmup", cfg.latency.warmup, ">= 0")
    _require(search.executor in ("inprocess", "ray"), "search.executor", search.executor, "inprocess or ray")
    _require(search.workers >= 1, "search.workers", search.workers, ">= 1")
    if search.searcher == "nsga2":
        _require(search.population >= 2, "search.population", search.population, ">= 2 for searcher nsga2")
    _require(search.population >= 1, "search.population", search.population, ">= 1")
    _require(search.generations >= 1, "search.generations", search.generations, ">= 1")
    evo = search.evolution
    _require(1 <= evo.parents <= search.population, "search.evolution.parents", evo.parents, "in [1, search.population]")
    _require(evo.mutations >= 0, "search.evolution.mutations", evo.mutations, ">= 0")
    _require(evo.crossovers >= 0, "search.evolution.crossovers", evo.crossovers, ">= 0")
    _require(0 <= evo.mutation_prob <= 1, "search.evolution.mutation_prob", evo.mutation_prob, "in [0, 1]")
    for key, value in {
        "search.max_flops": search.max_flops,
        "search.min_flops": search.min_flops,
        "pruningnet.max_flops": cfg.pruningnet.max_flops,
        "pruningnet.min_flops": cfg.pruningnet.min_flops,
    }.items():
        _require(value >= 0 and math.isfinite(value), key, value, "a fraction <= 1 or absolute FLOPs > 1")


def _check_distill(cfg: DistillConfig) -> None:
    from metaprune.distill import parse_weights, teacher_paths

    _require(cfg.alpha >= 0 and math.isfinite(cfg.alpha), "distill.alpha", cfg.alpha, ">= 0 (0 turns distillation off)")
    t = cfg.temperature
    _require(0 < t <= 1000 and math.isfinite(t), "distill.temperature", t, "in (0, 1000]")
    _require(0 <= cfg.assistant_width < 1, "distill.assistant_width", cfg.assistant_width, "in [0, 1) (0 = no assistant)")
    teachers = teacher_paths(cfg)
    parse_weights(cfg.teacher_weights, max(1, len(teachers)))


def _check_quantize(cfg: QuantizeConfig) -> None:
    from metaprune.deploy import CALIBRATION_METHODS

    _require(cfg.calib_images >= 1, "quantize.calib_images", cfg.calib_images, ">= 1")
    methods = ", ".join(CALIBRATION_METHODS)
    _require(cfg.calibration in CALIBRATION_METHODS, "quantize.calibration", cfg.calibration, f"one of {methods}")
    _require(cfg.max_drop >= 0 and math.isfinite(cfg.max_drop), "quantize.max_drop", cfg.max_drop, ">= 0 (top-1 points)")
    _require(cfg.qat in ("auto", "always", "never"), "quantize.qat", cfg.qat, "auto, always or never")
    _require(cfg.qat_epochs >= 1, "quantize.qat_epochs", cfg.qat_epochs, ">= 1")
    _require(cfg.qat_lr > 0 and math.isfinite(cfg.qat_lr), "quantize.qat_lr", cfg.qat_lr, "a positive number")
    _require(cfg.qat_batch_size >= 2, "quantize.qat_batch_size", cfg.qat_batch_size, ">= 2")
    _require(cfg.batch >= 1, "quantize.batch", cfg.batch, ">= 1")
    _require(cfg.threads >= 0, "quantize.threads", cfg.threads, ">= 0 (0 = one per core)")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    result: RunConfig = _build(RunConfig, data, "")
    return result


def _field_comments(cls: type) -> dict[str, str]:
    """`name: type = default  # comment` lines of a dataclass and its bases: the settings' docs."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            comments[match.group(1)] = match.group(2).strip()
    return comments


def describe_settings() -> str:
    """Every setting with its default and meaning, generated from the dataclasses (for --help)."""
    lines: list[str] = []
    defaults = RunConfig()
    top_comments = _field_comments(RunConfig)
    for item in dataclasses.fields(RunConfig):
        value = getattr(defaults, item.name)
        if dataclasses.is_dataclass(value):
            lines += _section_lines(item.name, value)
        else:
            lines.append(_setting_line(item.name, value, top_comments.get(item.name, "")))
    return "\n".join(lines)


def _section_lines(prefix: str, section: Any) -> list[str]:
    comments = _field_comments(type(section))
    lines: list[str] = []
    for sub in dataclasses.fields(section):
        value = getattr(section, sub.name)
        if dataclasses.is_dataclass(value):
            lines += _section_lines(f"{prefix}.{sub.name}", value)
        else:
            lines.append(_setting_line(f"{prefix}.{sub.name}", value, comments.get(sub.name, "")))
    return lines


def _setting_line(key: str, default: Any, comment: str) -> str:
    shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
    return f"  {key} = {shown}".ljust(40) + (f"  {comment}" if comment else "")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
