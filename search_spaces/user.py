"""The user's own network as a search space: `--model path/to/file.py:build_fn` or
`package.module:build_fn`, a function returning an `nn.Module` (given `num_classes` if it takes it).

`graph_space(recipe, ...)` rebuilds the same `GraphSpace` anywhere from a small recipe (the spec
string, or the module itself in the same process), which is what Ray workers and `load_subnet` get:
an fx graph module itself does not pickle on this torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces._space import with_channel_multiple
from search_spaces.graph import GraphSpace, from_module


def load_model(spec: str, num_classes: int | None = None, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Import and call the build function `spec` names (with `kwargs`, a registered family's data
    shape and width); ValueError (one line) on any mistake."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"model {spec!r} is not path/to/file.py:function or package.module:function")
    module = _import(where, spec)
    build = getattr(module, name, None)
    if not callable(build):
        raise ValueError(f"model {spec!r}: {where} has no function {name!r}")
    try:
        takes_classes = "num_classes" in inspect.signature(build).parameters
    except (TypeError, ValueError):
        takes_classes = False
    try:
        given = dict(kwargs or {})
        if takes_classes and num_classes is not None:
            given["num_classes"] = num_classes
        model = build(**given)
    except Exception as exc:
        raise ValueError(f"model {spec!r}: {name}() raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r}: {name}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import(where: str, spec: str) -> Any:
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"model {spec!r}: no file {path}")
        name = f"metaprune_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
        if name in sys.modules:
            return sys.modules[name]
        loader = importlib.util.spec_from_file_location(name, path)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.path.insert(0, str(path.parent))  # the file may import its neighbours
        try:
            sys.modules[name] = module
            loader.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ValueError(f"model {spec!r}: importing {path} raised {type(exc).__name__}: {_first_line(exc)}") from None
        finally:
            sys.path.remove(str(path.parent))
        return module
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise ValueError(f"model {spec!r}: cannot import {where} ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def graph_space(
    recipe: dict[str, Any], num_classes: int, input_shape: tuple[int, ...], channel_multiple: int = 1, quiet: bool = False
) -> GraphSpace:
    """The space of `recipe["model"]` (a spec string or an `nn.Module`) for inputs of `input_shape`
    (C, H, W), every gene rounded to `channel_multiple`; it keeps the recipe to be rebuilt from."""
    given = recipe["model"]
    if isinstance(given, str):
        given = absolute_spec(given)
    if isinstance(given, str):
        with torch.random.fork_rng(devices=[]):  # a fixed init, and the caller's random state left alone
            torch.manual_seed(0)
            model = load_model(given, num_classes, recipe.get("kwargs"))
    else:
        model = given
    name = recipe.get("name") or (_spec_name(given) if isinstance(given, str) else type(given).__name__)
    with warnings.catch_warnings():
        if quiet:  # a rebuild elsewhere: the first build warned already
            warnings.simplefilter("ignore", UserWarning)
        space = from_module(model.eval(), torch.zeros(1, *input_shape), name=name, genes=recipe.get("genes"), only_named=True)
    full = {
        **recipe,
        "model": given,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "channel_multiple": channel_multiple,
    }
    return with_channel_multiple(space, channel_multiple).with_recipe(full)


def absolute_spec(spec: str) -> str:
    """A file spec with its path made absolute (the run directory's record works from anywhere)."""
    where, sep, name = spec.rpartition(":")
    if sep and (where.endswith(".py") or "/" in where or "\\" in where):
        return f"{Path(where).expanduser().resolve()}:{name}"
    return spec


def _spec_name(spec: str) -> str:
    where, _, name = spec.rpartition(":")
    return f"{Path(where).stem if where.endswith('.py') else where}:{name}"


def from_recipe(recipe: dict[str, Any], order: list[list[int]] | None = None) -> GraphSpace:
    """The space `recipe` describes, keeping each gene's channels in `order` (an importance order)."""
    space = graph_space(recipe, recipe["num_classes"], tuple(recipe["input_shape"]), recipe["channel_multiple"], quiet=True)
    return space if order is None else space.with_order(tuple(np.asarray(gene, dtype=np.int64) for gene in order))
