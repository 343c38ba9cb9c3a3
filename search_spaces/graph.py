"""A search space from any traced module: `from_module(model, example_input)` -> `GraphSpace`.

The module is traced with torch.fx (symbolic trace, then shape propagation on the example input;
torch.export would also do, but fx keeps the user's module tree and names, which the plain subnet,
the weight files and every message use). Then every channel of every tensor is one element of a
union-find, and each op ties the channels it must keep together:

  - an add or mul of equal channel counts ties them one to one (a residual add, a squeeze-excite
    gate); a broadcast over channels (a gate of one channel) ties nothing;
  - a depthwise conv ties input channel c to its output channels; a grouped conv ties the same
    position of every group, so that every group keeps as many channels;
  - BatchNorm, activations, pools, dropout, a global mean and a flatten pass channels through (a
    flatten of H x W maps gives each channel H * W features);
  - a concat lists its inputs' channels side by side; a split or chunk, a channel shuffle
    (`view -> transpose -> view` or `channel_shuffle`) and a channel slice pick channels by index:
    each becomes a `KeptGather` in the graph, which under a configuration picks the kept ones.

Each class of the union-find is one channel (or one per group). Classes written by the same convs
and linears form one gene; its choices are scales of its size. A class is frozen (always kept)
when it holds the model's input or outputs, or when an op the analysis does not know touches it:
then a warning names the op and its module path.

A configuration keeps, of each gene, the classes ranked first (`GraphSpace.order`, the identity
until an importance ranking sets it), and every tensor keeps the positions whose class is kept. So
the plain subnet of a configuration is the user's module with every conv, BN and linear sliced to
those positions: the full-width subnet is the user's network itself.
"""

from search_spaces._graph_build import (
    build_graph_subnet,
    conv_inputs,
    copy_bn,
    count_graph,
    gather_index,
    slice_module,
    source_of,
)
from search_spaces._graph_space import WEIGHTED, GraphSpace, KeptGather, Parts, TraceError
from search_spaces._graph_trace import from_module

__all__ = [
    "WEIGHTED", "GraphSpace", "KeptGather", "Parts", "TraceError", "build_graph_subnet", "conv_inputs", "copy_bn",
    "count_graph", "from_module", "gather_index", "slice_module", "source_of",
]  # fmt: skip
