"""`largebatch plan`: what data-parallel training costs on W workers, from a latency-bandwidth model.

Time per iteration = forward + backward + the part of the gradient all-reduce that backprop cannot
hide. All-reduce costs follow Thakur, Rabenseifner and Gropp (2005) with latency α per message and
bandwidth in bytes/s: both ring and recursive halving/doubling move 2(p-1)/p·M bytes per node; the ring
takes 2(p-1) steps, halving/doubling 2·log2(p). The paper's hierarchical all-reduce sums the GPUs of a
server (over NVLink), all-reduces across servers, then broadcasts within each server. Each layer's
gradient is its own all-reduce (`buffers`), started as soon as backprop produces it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..errors import UserError

ALGORITHMS = ("ring", "halving_doubling", "hierarchical")


@dataclasses.dataclass(frozen=True)
class Network:
    latency: float  # α: seconds per message step between servers
    bandwidth: float  # bytes/s per server's network card
    gpus_per_server: int = 8
    intra_latency: float = 5e-6  # within a server (NVLink)
    intra_bandwidth: float = 20e9


@dataclasses.dataclass(frozen=True)
class Workload:
    params: int  # parameters, each all-reduced once per iteration
    forward: float  # seconds per micro-batch on one worker
    backward: float
    per_worker: int  # images per worker per iteration
    bytes_per_param: int = 4
    buffers: int = 1  # separate all-reduces per iteration (one per layer, or per DDP bucket)
    overlap: float = 1.0  # fraction of backward time communication can run behind
    dataset: int = 1_281_167
    epochs: float = 90

    @property
    def grad_bytes(self) -> float:
        return self.params * self.bytes_per_param


def ring(m: float, p: int, latency: float, bandwidth: float, buffers: int = 1) -> float:
    """Ring all-reduce of m bytes (in `buffers` pieces) on p nodes: 2(p-1) steps, 2(p-1)/p·m bytes per node."""
    if p <= 1:
        return 0.0
    return buffers * 2 * (p - 1) * latency + 2 * (p - 1) / p * m / bandwidth


def halving_doubling(m: float, p: int, latency: float, bandwidth: float, buffers: int = 1) -> float:
    """Recursive halving (reduce-scatter) then doubling (all-gather): 2·log2(p) steps, the ring's bytes.

    Defined for p a power of two; otherwise the ring (as the paper does)."""
    if p <= 1:
        return 0.0
    if p & (p - 1):
        return ring(m, p, latency, bandwidth, buffers)
    return buffers * 2 * math.log2(p) * latency + 2 * (p - 1) / p * m / bandwidth


def intra_reduce(m: float, g: int, latency: float, bandwidth: float, buffers: int = 1) -> float:
    """Sum g GPUs' buffers into one (a ring reduce-scatter + gather to one GPU); a broadcast costs the same."""
    if g <= 1:
        return 0.0
    return buffers * (g - 1) * latency + (g - 1) / g * m / bandwidth


def allreduce(algorithm: str, m: float, workers: int, net: Network, buffers: int = 1) -> float:
    """Seconds to all-reduce m bytes over `workers` GPUs, `net.gpus_per_server` to a server."""
    g = min(workers, net.gpus_per_server)
    servers = math.ceil(workers / g)
    if servers == 1:  # one server: NVLink only
        return ring(m, g, net.intra_latency, net.intra_bandwidth, buffers)
    if algorithm == "hierarchical":
        inter = halving_doubling(m, servers, net.latency, net.bandwidth, buffers)
        return 2 * intra_reduce(m, g, net.intra_latency, net.intra_bandwidth, buffers) + inter
    # Flat algorithms over all GPUs: the g GPUs of a server share its network card.
    flat = ring if algorithm == "ring" else halving_doubling
    return flat(m, workers, net.latency, net.bandwidth / g, buffers)


def iteration(w: Workload, workers: int, net: Network, algorithm: str = "hierarchical") -> dict:
    """One iteration on `workers` GPUs: compute, communication, and what of it is exposed."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"--algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    comm = allreduce(algorithm, w.grad_bytes, workers, net, w.buffers)
    # The last layer's all-reduce starts when backprop ends: it is never hidden.
    exposed = max(comm - w.overlap * w.backward, comm / w.buffers) if comm else 0.0
    total = w.forward + w.backward + exposed
    return dict(workers=workers, batch=workers * w.per_worker, comm=comm, exposed=exposed, iteration=total,
                images_per_s=workers * w.per_worker / total,
                epoch=w.dataset / (workers * w.per_worker) * total,
                train=w.epochs * w.dataset / (workers * w.per_worker) * total)


def table(w: Workload, net: Network, workers: list[int], algorithm: str = "hierarchical",
          reference: int = 8) -> list[dict]:
    """`iteration` for each W, with scaling efficiency against a perfect extrapolation of `reference` workers."""
    ref = iteration(w, reference, net, algorithm)
    rows = [iteration(w, W, net, algorithm) for W in workers]
    for r in rows:
        r["efficiency"] = r["images_per_s"] / (ref["images_per_s"] * r["workers"] / reference)
    return rows


# The paper's set-up: ResNet-50 (25.6M parameters, 161 layers with weights) on P100s, 32 images each;
# 29 h for 90 epochs at kn = 256 on 8 GPUs is 232 ms per iteration, ~120 ms of it backprop ("forward"
# here is the rest: forward, data, update). Big Basin servers: 8 P100s on NVLink, one 50 Gbit/s card.
PAPER_WORKLOAD = Workload(params=25_557_032, forward=0.112, backward=0.12, per_worker=32, buffers=161)
PAPER_NETWORK = Network(latency=10e-6, bandwidth=50e9 / 8)


def load_calibration(path: str | Path) -> tuple[Workload, Network]:
    """Workload and network measured on this machine by `benchmarks/allreduce.py` (a JSON file)."""

    try:
        m = json.loads(Path(path).read_text())
        return (Workload(params=m["params"], forward=m["forward"], backward=m["backward"],
                         per_worker=m["per_worker"], buffers=m["buffers"], dataset=m["dataset"], epochs=m["epochs"]),
                Network(latency=m["latency"], bandwidth=m["bandwidth"], gpus_per_server=1))
    except FileNotFoundError:
        raise UserError(f"--calibration {path}: no such file; make bench writes it") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"--calibration {path} is not a calibration file from benchmarks/allreduce.py ({e})") from None


def render_table(w: Workload, net: Network, workers: list[int], algorithm: str, reference: int) -> str:
    """The table `largebatch plan` prints."""
    lines = [f"{w.params / 1e6:.1f}M parameters ({w.grad_bytes / 1e6:.0f} MB of gradients in {w.buffers} all-reduces), "
             f"{w.per_worker} images per worker, forward {1e3 * w.forward:.1f} ms + backward {1e3 * w.backward:.1f} ms; "
             f"network α = {1e6 * net.latency:.1f} µs, {8 * net.bandwidth / 1e9:.3g} Gbit/s per server of "
             f"{net.gpus_per_server}; {algorithm} all-reduce, overlap {w.overlap:g}",
             f"{'W':>6} {'batch':>7} {'iter ms':>8} {'comm ms':>8} {'exposed':>8} {'img/s':>9} {'epoch':>9} "
             f"{'train':>9} {'efficiency':>10}"]
    for r in table(w, net, workers, algorithm, reference):
        lines.append(f"{r['workers']:>6} {r['batch']:>7} {1e3 * r['iteration']:>8.1f} {1e3 * r['comm']:>8.1f} "
                     f"{1e3 * r['exposed']:>8.1f} {r['images_per_s']:>9.0f} {_duration(r['epoch']):>9} "
                     f"{_duration(r['train']):>9} {100 * r['efficiency']:>9.1f}%")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
