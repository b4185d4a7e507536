"""cpus_per_worker: what 'auto' resolves to, and which requests are refused before launch."""

import pytest

from raydeep.cluster.resources import cpus_per_worker
from raydeep.errors import ResourceError


def cpw(requested, workers, cpus, node=None, gpu=False):
    return cpus_per_worker(requested, num_workers=workers, cluster_cpus=cpus,
                           max_node_cpus=cpus if node is None else node, use_gpu=gpu)


@pytest.mark.parametrize(("workers", "cpus", "expected"), [
    (2, 2.0, 0.5),     # a 2-core laptop: 1 CPU kept for Ray Data, the rest shared
    (2, 1.9, 0.45),    # the same laptop inside a sweep trial (0.1 CPU token): 0.9/2 in floats is 0.44999...
    (3, 2.0, 0.333),   # rounded down, never up
    (2, 8.0, 3.0),     # whole CPUs once there is at least one each
    (2, 16.0, 4.0),    # at most 4 each
    (1, 1.5, 0.5),
])
def test_auto_cpu(workers, cpus, expected):
    got = cpw("auto", workers, cpus)
    assert got == expected
    assert got * workers <= cpus - 1.0 + 1e-9


def test_auto_gpu_takes_one_cpu():
    assert cpw("auto", 4, 8.0, gpu=True) == 1.0


def test_explicit_that_fits_exactly():
    assert cpw(0.45, 2, 1.9) == 0.45
    assert cpw(1, 2, 3.0) == 1.0


def test_explicit_that_starves_ray_data():
    with pytest.raises(ResourceError, match=r"2 workers x 1 CPU = 2 of the cluster's 2 CPUs leaves 0 for Ray Data.*<= 0.5"):
        cpw(1, 2, 2.0)


def test_no_cpu_left_for_workers():
    with pytest.raises(ResourceError, match="Lower scaling.num_workers"):
        cpw("auto", 2, 1.0)


def test_larger_than_any_node():
    with pytest.raises(ResourceError, match="no node has that many CPUs"):
        cpw(3, 2, 16.0, node=2.0)
