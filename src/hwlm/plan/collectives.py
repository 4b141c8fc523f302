"""Collectives on a device's fabric: the latency and bandwidth of one all-reduce (or all-to-all) over n devices.

An all-reduce of V bytes over a ring of n ranks (Patarasuk & Yuan 2009) takes ``2(n-1)`` steps; each
step pays a per-hop latency and the whole moves ``2(n-1)/n x V`` bytes per rank. Decode under tensor
parallelism runs two such all-reduces per layer of ``batch x hidden`` activations (kilobytes to a few
megabytes), where the latency term dominates, so the time is the collective library's own cost model::

    t = base + 2(n-1) x hop + 2(n-1)/n x V / (group bandwidth x comm_eff)

``base`` and ``hop`` are the figures each library ships for its own algorithm selection (ring, low-latency
protocol; :data:`LIBRARIES`, quoted with file and constant): NCCL's ``baseLat`` / ``hwLat`` tables in
``src/graph/tuning.cc`` and RCCL's copies of them. Where a vendor publishes none (Habana HCCL, XLA on
TPU ICI, Neuron), the nearest published figure is taken and marked *assumed*.

The group bandwidth follows the catalog's ``topology`` (:func:`group_bandwidth`):

* ``switch`` (NVSwitch, the default): every device reaches any peer at its full per-device bandwidth;
* ``mesh`` (AMD Infinity Fabric, Gaudi's RoCE ports): point-to-point links to each of the node's other
  devices, so a group of n inside a node of N reaches only n-1 of the N-1 links (a tp=2 pair of Gaudi 2
  cards has 3 x 100 GbE between them, not 21);
* ``torus-2d`` / ``torus-3d`` (TPU ICI, Trainium NeuronLink): 4 or 6 links per chip, a ring along one
  dimension uses its 2 (both directions), a group spanning k dimensions 2k; the dimension length is taken
  as the pod's side (``scale_up_devices ** (1/d)``);
* ``pcie``: through the host's PCIe switch, at ``intra_node_bw``, with NCCL's PCI hop latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hwlm.plan.catalog import TOPOLOGIES, Device
from hwlm.plan.parallel import FALLBACK_LINK_BW

__all__ = ["Library", "LIBRARIES", "TOPOLOGIES", "library_for", "group_bandwidth", "allreduce_time",
           "allreduce_latency", "ring_steps", "network_link", "ranks_per_domain", "all_to_all_bytes_time",
           "all_to_all_time"]

_NCCL = "NVIDIA/nccl src/graph/tuning.cc"
_RCCL = "ROCm/rccl src/graph/tuning.cc"


@dataclass(frozen=True)
class Library:
    """A collective library's latency model for ring all-reduce with its low-latency protocol (seconds)."""

    name: str
    base_s: float        # fixed cost of one collective (launch, handshake)
    hop_fabric_s: float  # per ring step over the scale-up fabric (NVLink, xGMI, ICI)
    hop_pcie_s: float    # per ring step through PCIe
    hop_net_s: float     # per ring step across the network
    source: str


LIBRARIES: dict[str, Library] = {
    "nccl": Library("NCCL", 6.6e-6, 0.6e-6, 1.0e-6, 2.7e-6,
                    f"{_NCCL}: baseLat Ring/LL 6.6 us; hwLat Ring/LL NVLINK 0.6, PCI 1.0, NET 2.7 us per step"),
    "rccl": Library("RCCL", 12.0e-6, 0.8e-6, 2.2e-6, 9.5e-6,
                    f"{_RCCL}: baseLat Ring/LL 12.0 us; tuning_model_0 hwLat Ring/LL NVLINK (xGMI) 0.8, PCI 2.2, "
                    "NET 9.5 us per step"),
    "hccl": Library("Habana HCCL", 6.6e-6, 2.7e-6, 2.7e-6, 2.7e-6,
                    "assumed: Habana publishes no HCCL latency model; Gaudi's scale-up links are RoCE ports, so "
                    f"NCCL's network figures ({_NCCL}: baseLat Ring/LL 6.6 us, hwLat Ring/LL NET 2.7 us) stand in"),
    "xla-ici": Library("XLA on ICI", 6.6e-6, 0.6e-6, 1.0e-6, 2.7e-6,
                       "assumed: Google publishes no ICI collective latency; NCCL's NVLink figures "
                       f"({_NCCL}: 6.6 us + 0.6 us per step) stand in for a direct chip-to-chip link"),
    "neuron-cc": Library("Neuron collectives", 6.6e-6, 2.7e-6, 2.7e-6, 2.7e-6,
                         "assumed: AWS publishes no Neuron collective latency; NCCL's network figures "
                         f"({_NCCL}: 6.6 us + 2.7 us per step) stand in"),
    "host": Library("gloo / oneCCL on host memory", 50e-6, 5e-6, 5e-6, 10e-6,
                    "assumed: a CPU all-reduce through shared memory or TCP (gloo), tens of microseconds"),
}
_BY_VENDOR = {"nvidia": "nccl", "amd": "rccl", "intel": "hccl", "google": "xla-ici", "aws": "neuron-cc"}


def library_for(dev: Device) -> Library:
    """The collective library a device's stack uses: NCCL on NVIDIA, RCCL on AMD, HCCL on Gaudi, ..."""
    if dev.kind == "cpu":
        return LIBRARIES["host"]
    return LIBRARIES[_BY_VENDOR.get(dev.vendor, "nccl")]


def ring_steps(n: int, dims: int = 1) -> int:
    """Steps of a ring all-reduce over n ranks: n-1 of reduce-scatter, n-1 of all-gather; on a torus the
    rings of the ``dims`` dimensions it spans run one after another, each over n^(1/dims) ranks.

    >>> ring_steps(8), ring_steps(256, dims=2)
    (14, 60)
    """
    side = round(n ** (1.0 / dims))
    return 2 * (n - 1) if dims == 1 else dims * 2 * (side - 1)


def _torus_dims(topology: str) -> int:
    return 3 if topology == "torus-3d" else 2


def _spanned_dims(dev: Device, n: int) -> int:
    """Torus dimensions a group of n neighbouring chips spans (1 off a torus)."""
    if dev.topology not in ("torus-2d", "torus-3d"):
        return 1
    d = _torus_dims(dev.topology)
    side = max(2, round(dev.scale_up_devices ** (1.0 / d)))
    return min(d, max(1, math.ceil(math.log(n) / math.log(side) - 1e-9)))


def network_link(dev: Device) -> tuple[float, str, str]:
    """Per-device bandwidth between scale-up domains (the catalog's ``inter_node_bw``, its NIC share), a
    description, and the hop kind; a device with no network figure falls back to an assumed PCIe link."""
    if dev.inter_node_bw:
        return dev.inter_node_bw, "inter-node network", "net"
    return dev.intra_node_bw or FALLBACK_LINK_BW, "assumed PCIe 4.0 x16 (catalog gives no link)", "pcie"


def group_bandwidth(dev: Device, n: int) -> tuple[float, str, str]:
    """Per-device bandwidth (bytes/s, per direction) of a collective over ``n`` neighbouring devices, a
    description, and the hop kind ("fabric", "pcie" or "net") for the latency."""
    topo = dev.topology
    if n > dev.scale_up_devices or not dev.intra_node_bw:
        return network_link(dev)
    bw = dev.intra_node_bw
    if topo == "pcie":
        return bw, f"PCIe {bw:.4g} B/s", "pcie"
    if topo == "mesh" and dev.devices_per_node > 1:
        used = min(n, dev.devices_per_node) - 1
        share = used / (dev.devices_per_node - 1)
        link = bw / (dev.devices_per_node - 1)
        return bw * share, f"full mesh: {used} of {dev.devices_per_node - 1} links x {link:.4g}", "fabric"
    if topo in ("torus-2d", "torus-3d"):
        d, spans = _torus_dims(topo), _spanned_dims(dev, n)
        side = max(2, round(dev.scale_up_devices ** (1.0 / d)))
        return bw * spans / d, f"{topo}: ring over {spans} of {d} dimensions ({2 * spans} of {2 * d} links, " \
            f"side {side})", "fabric"
    if topo == "ring" and dev.devices_per_node > 1:
        return bw, f"ring link {bw:.4g}", "fabric"
    return bw, "switched fabric (any peer at full bandwidth)", "fabric"


def allreduce_latency(dev: Device, n: int) -> tuple[float, str]:
    """Seconds of latency of one small all-reduce over ``n`` devices and the formula."""
    if n <= 1:
        return 0.0, ""
    lib = library_for(dev)
    _, _, hop_kind = group_bandwidth(dev, n)
    hop = {"fabric": lib.hop_fabric_s, "pcie": lib.hop_pcie_s, "net": lib.hop_net_s}[hop_kind]
    steps = ring_steps(n, _spanned_dims(dev, n) if hop_kind == "fabric" else 1)
    return lib.base_s + steps * hop, \
        f"{lib.name} {lib.base_s * 1e6:.3g} us + {steps} steps x {hop * 1e6:.3g} us ({hop_kind})"


def allreduce_time(dev: Device, n: int, nbytes: float, comm_eff: float) -> tuple[float, str]:
    """Seconds of one ring all-reduce of ``nbytes`` over ``n`` devices: latency + bytes over the group's
    bandwidth; and the formula with its numbers."""
    if n <= 1:
        return 0.0, ""
    lat, lat_f = allreduce_latency(dev, n)
    bw, what, _ = group_bandwidth(dev, n)
    t = lat + 2 * (n - 1) / n * nbytes / (bw * comm_eff)
    return t, f"({lat_f}) + 2({n}-1)/{n} x {nbytes:.4g} B / ({what}: {bw:.4g} x {comm_eff:.3g})"


def ranks_per_domain(dev: Device, n: int, stride: int = 1) -> int:
    """Of ``n`` ranks ``stride`` devices apart (the ep peers of a layout whose tp ranks are neighbours:
    stride tp), how many share one scale-up domain (a node, an NVL72 rack, a TPU pod).

    >>> from hwlm.plan.catalog import get_device
    >>> h100 = get_device("h100-sxm")  # 8 GPUs a node
    >>> ranks_per_domain(h100, 16), ranks_per_domain(h100, 2, stride=8), ranks_per_domain(h100, 4, stride=2)
    (8, 1, 4)
    """
    return max(1, min(n, dev.scale_up_devices // max(stride, 1)))


def all_to_all_bytes_time(dev: Device, n: int, nbytes: float, comm_eff: float,
                          stride: int = 1) -> tuple[float, str, list[tuple[int, str]]]:
    """The bandwidth part of one all-to-all in which each of ``n`` ranks (``stride`` devices apart) sends
    ``nbytes`` spread evenly over the group: of its n - 1 peers, ``r - 1`` share its scale-up domain
    (:func:`ranks_per_domain`) and take (r-1)/n of the bytes over the scale-up link (on a torus, over the
    dimensions their r x stride chips span); the other n - r take
    (n-r)/n of the bytes over the inter-node network (:func:`network_link`). The two links carry their
    shares at once (NCCL's grouped sends and receives run every peer's transfer together; DeepSeek-V3's
    kernels overlap NVLink and InfiniBand likewise, arXiv:2412.19437 section 3.2.2), so the slower share sets
    the time.

    Returns (seconds, formula, [(peers, hop kind)]) for the latency."""
    r = ranks_per_domain(dev, n, stride)
    parts, times, peers = [], [0.0], []
    if r > 1:
        # A mesh gives each rank direct links to its r-1 peers only; on a torus the ranks are spread over the
        # r x stride chips between them, and the routes cross every dimension that region spans.
        span = r if dev.topology == "mesh" else min(r * stride, dev.scale_up_devices)
        bw, what, kind = group_bandwidth(dev, span)
        times.append((r - 1) / n * nbytes / (bw * comm_eff))
        parts.append(f"({r}-1)/{n} x {nbytes:.4g} B / ({what}: {bw:.4g} x {comm_eff:.3g})")
        peers.append((r - 1, kind))
    if r < n:
        bw, what, kind = network_link(dev)
        times.append((n - r) / n * nbytes / (bw * comm_eff))
        parts.append(f"({n}-{r})/{n} x {nbytes:.4g} B leaving the {dev.scale_up_devices}-device scale-up domain "
                     f"({r} of {n} ranks share one) / ({what}: {bw:.4g} x {comm_eff:.3g})")
        peers.append((n - r, kind))
    formula = parts[0] if len(parts) == 1 else f"max({parts[0]}, {parts[1]})"
    return max(times), formula, peers


def all_to_all_time(dev: Device, n: int, nbytes: float, comm_eff: float, stride: int = 1) -> tuple[float, str]:
    """Seconds of one all-to-all in which each of ``n`` ranks (``stride`` devices apart) sends ``nbytes``
    spread evenly over the group (expert-parallel dispatch or combine): n - 1 direct sends in one group (one
    latency step per peer, on the link it uses) plus the bytes (:func:`all_to_all_bytes_time`)."""
    if n <= 1:
        return 0.0, ""
    lib = library_for(dev)
    hop = {"fabric": lib.hop_fabric_s, "pcie": lib.hop_pcie_s, "net": lib.hop_net_s}
    t_bytes, bytes_f, peers = all_to_all_bytes_time(dev, n, nbytes, comm_eff, stride)
    lat = lib.base_s + sum(k * hop[kind] for k, kind in peers)
    hops = " + ".join(f"{k} peers x {hop[kind] * 1e6:.3g} us ({kind})" for k, kind in peers)
    return lat + t_bytes, f"({lib.name} {lib.base_s * 1e6:.3g} us + {hops}) + {bytes_f}"
