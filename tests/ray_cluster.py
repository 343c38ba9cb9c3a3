"""A real multi-node Ray cluster on this machine, for tests of the Ray executor and the CLI.

Use it from a test module with `from tests.ray_cluster import ray_cluster  # noqa: F401` and a
`ray_cluster` argument: the address to pass to `RayExecutor(address=...)` or `--ray-address`. The
test process itself does not connect, so a driver in it or in a subprocess joins as any user would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray.cluster_utils import Cluster

NODE_CPUS = 1  # per node, so two one-CPU actors must land on different nodes


@pytest.fixture(scope="session")  # one cluster for every module that asks: starting one costs ~8 s
def ray_cluster() -> Iterator[str]:
    """A head and a second node (separate raylet processes, one CPU each); yields the head's address."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=NODE_CPUS)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
