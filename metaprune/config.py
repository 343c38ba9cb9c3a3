"""One run's configuration: the sections' defaults (`metaprune.config_sections`), a YAML file, and
`--set key=value` overrides, checked as a whole (`metaprune.config_checks`).

The defaults run the quickstart (handwritten digits, ResNet-20, the paper's search) on a CPU in
a few minutes. Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from metaprune.config_checks import validate
from metaprune.config_sections import (
    FINETUNE_INITS,
    PRUNINGNET_INITS,
    BaseSection,
    DataConfig,
    EvolutionSection,
    FinetuneSection,
    PruningNetSection,
    RoundsSection,
    RunConfig,
    SearchSection,
    SpaceConfig,
)
from metaprune.errors import UserError

__all__ = [
    "FINETUNE_INITS", "PRUNINGNET_INITS", "BaseSection", "DataConfig", "EvolutionSection", "FinetuneSection",
    "PruningNetSection", "RoundsSection", "RunConfig", "SearchSection", "SpaceConfig", "describe_settings",
    "dump_config", "load_config", "validate",
]  # fmt: skip

# settings that moved into a searcher's own section: the old keys keep working (YAML and --set)
MOVED = {
    **{
        ("search", key): ("search", "evolution", key)
        for key in ("parents", "mutations", "crossovers", "mutation_prob", "include_uniform")
    },
    ("search", "batch"): ("search", "rounds", "batch"),
}


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
