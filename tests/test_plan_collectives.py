"""The collective cost model: library latency x ring steps + bytes over the topology's group bandwidth."""

from __future__ import annotations

import pytest

from hwlm.plan import get_device
from hwlm.plan.collectives import LIBRARIES, allreduce_latency, allreduce_time, group_bandwidth, library_for, ring_steps


def test_ring_steps() -> None:
    assert [ring_steps(n) for n in (2, 4, 8)] == [2, 6, 14]
    assert ring_steps(256, dims=2) == 2 * 2 * 15  # two rings of 16, one after the other
    assert ring_steps(64, dims=3) == 3 * 2 * 3


def test_latency_is_the_librarys_base_plus_a_hop_per_step() -> None:
    h100, mi300x = get_device("h100-sxm"), get_device("mi300x")
    nccl, rccl = LIBRARIES["nccl"], LIBRARIES["rccl"]
    assert library_for(h100) is nccl and library_for(mi300x) is rccl
    assert allreduce_latency(h100, 4)[0] == pytest.approx(nccl.base_s + 6 * nccl.hop_fabric_s)
    assert allreduce_latency(mi300x, 8)[0] == pytest.approx(rccl.base_s + 14 * rccl.hop_fabric_s)
    assert allreduce_latency(get_device("l4"), 2)[0] == pytest.approx(nccl.base_s + 2 * nccl.hop_pcie_s)
    assert allreduce_latency(h100, 1)[0] == 0.0
    for lib in LIBRARIES.values():
        assert lib.source and lib.base_s > 0 and lib.hop_fabric_s > 0


def test_group_bandwidth_follows_the_topology() -> None:
    h100, gaudi2, mi300x, v6e = (get_device(d) for d in ("h100-sxm", "gaudi2", "mi300x", "tpu-v6e"))
    assert group_bandwidth(h100, 2)[0] == group_bandwidth(h100, 8)[0] == h100.intra_node_bw  # NVSwitch
    # full mesh: a pair shares one of the seven links, all eight use all seven
    assert group_bandwidth(gaudi2, 2)[0] == pytest.approx(gaudi2.intra_node_bw / 7)
    assert group_bandwidth(gaudi2, 4)[0] == pytest.approx(gaudi2.intra_node_bw * 3 / 7)
    assert group_bandwidth(mi300x, 8)[0] == pytest.approx(mi300x.intra_node_bw)
    # 2D torus of 16 x 16: a group inside one dimension rides 2 of the 4 links, the whole pod all 4
    assert group_bandwidth(v6e, 16)[0] == pytest.approx(v6e.intra_node_bw / 2)
    assert group_bandwidth(v6e, 256)[0] == pytest.approx(v6e.intra_node_bw)
    # beyond the scale-up domain: the network
    assert group_bandwidth(h100, 16)[0] == h100.inter_node_bw


def test_allreduce_time_adds_the_bytes_term() -> None:
    dev = get_device("h100-sxm")
    lat, _ = allreduce_latency(dev, 4)
    t, formula = allreduce_time(dev, 4, 1e6, 0.8)
    assert t == pytest.approx(lat + 2 * 3 / 4 * 1e6 / (dev.intra_node_bw * 0.8))
    assert "NCCL" in formula
