"""metaprune: MetaPruning and architecture search for trained convolutional networks.

`metaprune.prune(model, train, test, flops=0.5)` runs the whole pipeline in one call
(`metaprune.api`); `run_search.py` is the command line over the same stages.
"""

from typing import Any


def __getattr__(name: str) -> Any:  # the entry point on first use: `import metaprune` stays light
    if name in ("prune", "Pruned"):
        from metaprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'metaprune' has no attribute {name!r}")
