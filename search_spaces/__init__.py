"""Network families as data: genes, layers, and everything derived from them.

A `SearchSpace` describes a family (a chain of layers), a `GraphSpace` any traced module
(`from_module`); a configuration (`Config`) picks one width per gene. From the two alone:
`build_subnet` (`build_graph_subnet`) gives the plain `nn.Module`, `count` its FLOPs and params (equal to
thop's), and `sample_within` / `mutate` / `crossover` give searchers their moves.
"""

from search_spaces import _families  # noqa: F401  (registers the built-in families)
from search_spaces._build import (
    LayerFactory,
    Network,
    architecture,
    build_subnet,
    fresh_subnet,
    load_subnet,
    space_from_payload,
    space_payload,
    subnet_from_architecture,
)
from search_spaces._count import Cost, count, flops, params
from search_spaces._ops import check_window, crossover, mutate, repair, sample, sample_within, uniform, uniform_within
from search_spaces._registry import Family, create_space, get_family, list_spaces, register_module, register_space
from search_spaces._space import (
    Classifier,
    Config,
    ConvLayer,
    Gene,
    GeneSpace,
    MaxPool,
    ResidualBlock,
    SearchSpace,
    Width,
    conv_out_size,
    default_scales,
    with_channel_multiple,
)
from search_spaces.graph import GraphSpace, TraceError, build_graph_subnet, from_module

__all__ = [
    "Classifier",
    "Config",
    "ConvLayer",
    "Cost",
    "Family",
    "Gene",
    "GeneSpace",
    "GraphSpace",
    "LayerFactory",
    "TraceError",
    "MaxPool",
    "Network",
    "ResidualBlock",
    "SearchSpace",
    "Width",
    "architecture",
    "build_graph_subnet",
    "build_subnet",
    "check_window",
    "conv_out_size",
    "count",
    "create_space",
    "crossover",
    "default_scales",
    "flops",
    "fresh_subnet",
    "from_module",
    "get_family",
    "list_spaces",
    "load_subnet",
    "mutate",
    "params",
    "register_module",
    "register_space",
    "repair",
    "sample",
    "sample_within",
    "space_from_payload",
    "space_payload",
    "subnet_from_architecture",
    "uniform",
    "uniform_within",
    "with_channel_multiple",
]
