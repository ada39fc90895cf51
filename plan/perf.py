"""Performance model: cycles, throughput, latency, link traffic and memory of a plan.

Every constant of the hardware model lives here, so that the simulator's
measurements can calibrate it in one place.

Engines
    An engine of P PEs takes ``ceil(MACs / P) / ENGINE_EFFICIENCY[kind]`` cycles
    per sample. The efficiencies start at 1.0 (an ideal array); the simulator's
    measured PE utilisation is meant to replace them.
Numbers
    Activations and errors are 16 bits on the wire and in buffers. A weight held by
    the chip that uses it costs 96 bits: the 16-bit copy the engines read, the
    32-bit master weight and the 48-bit gradient accumulator of the WU unit.
Weights stored elsewhere (weight balancing)
    Held whole (96 bits) by the storing chip (or, for linear layers, its DRAM).
    A conv weight is reused over the whole map, so it is streamed per sample:
    16-bit copy for FP and again for BP towards the user, 16-bit gradient back
    (``REMOTE_CONV_BITS``). A linear weight is used once per sample, so its slice
    runs batch-wise: copies stream once per mini-batch for FP and BP and the
    48-bit batch gradient goes back once (``REMOTE_LINEAR_BITS``), at the price of
    buffering the batch's input and error vectors (in DRAM where the board has
    some, else on chip).
Links
    Per direction, a link carries ``link_efficiency(ber)`` of its raw rate as payload
    (:func:`fpdeep.plan.model.timing.link_efficiency`, the gateware link layer's own
    figure: its framing bound times the chance that a full frame arrives intact, with
    selective repeat; ACKs and credits ride in the headers). The cluster gives the BER.
Pipelining
    A chip's stage latency is its cycles per sample times the fraction of its input
    it must see before producing output (kh rows of the map for a conv, all of it
    for a linear layer). A sample's latency is the FP chain plus the BP chain.
    Under synchronous SGD the pipeline drains at every mini-batch boundary; the
    bubble is that round trip.
"""

import math

from .model.timing import link_efficiency

__all__ = ["ENGINE_EFFICIENCY", "ACT_BITS", "LOCAL_WEIGHT_BITS",
           "REMOTE_CONV_BITS", "REMOTE_LINEAR_BITS", "OPS_PER_MAC", "CACHE_SAMPLES",
           "link_payload_bps", "throughput", "latency", "stage_fraction"]

#: Fraction of peak MAC rate each engine kind achieves. 1.0 until measured.
ENGINE_EFFICIENCY = {"fp": 1.0, "bp": 1.0, "wu": 1.0}
ACT_BITS = 16
ERR_BITS = 16
#: Bits per weight held by the chip that uses it: 16 copy + 32 master + 48 accumulator.
LOCAL_WEIGHT_BITS = 16 + 32 + 48
#: Link bits per remote conv weight per sample: copy for FP, copy for BP, gradient back.
REMOTE_CONV_BITS = {"to_user": 32, "to_store": 16}
#: Link bits per remote linear weight per mini-batch: copies for FP and BP, batch gradient.
REMOTE_LINEAR_BITS = {"to_user": 32, "to_store": 48}
#: Bits per weight per mini-batch for a row-split layer's gradient sum and copy broadcast.
ROW_REDUCE_BITS = {"bwd": 48, "fwd": 16}
#: Samples of input map a layer slice caches for its WU (fine-grained pipelining keeps
#: the round trip under one sample; the simulator checks this).
CACHE_SAMPLES = 1
OPS_PER_MAC = 2


def link_payload_bps(raw_bps, ber):
    """Payload bits per second of one link direction of raw rate ``raw_bps`` at
    bit-error rate ``ber``, as the gateware's link layer carries them."""
    return raw_bps * link_efficiency(ber)


def stage_fraction(tile):
    """Fraction of a sample a tile must receive before its output starts."""
    w = tile.layer.work
    if w.kind == "linear":
        return 1.0
    return min(1.0, w.kernel[0] / w.in_shape[1])


def latency(chips, boards, link_latency_s):
    """One sample's FP + BP latency through the chain, in seconds."""
    stages = 0.0
    for chip in chips:
        if chip.tiles:
            fraction = max(stage_fraction(t) for t in chip.tiles)
            stages += chip.cycles * fraction / boards[chip.index].clock_hz
    return 2 * (stages + (len(chips) - 1) * link_latency_s)


def throughput(compute, link, dram):
    """Steady images/s and the limiting factor from the three bounds (images/s each)."""
    bounds = {"compute": compute, "link": link, "memory": dram}
    factor = min(bounds, key=lambda k: bounds[k])
    return bounds[factor], factor


def ceil_div(a, b):
    return -(-a // b)


def isfinite(x):
    return not (math.isinf(x) or math.isnan(x))
