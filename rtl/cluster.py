"""A chain of training chips joined by reliable serial links, in simulation."""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..plan.errors import FpdeepError
from .core import TrainingCore, network_layers
from .host import HostSignature
from .link.channels import VirtualChannel
from .link.endpoint import LinkPair
from .link.frame import LinkConfig

__all__ = ["Cluster"]


class Cluster(wiring.Component):
    """``N`` :class:`~fpdeep.rtl.core.TrainingCore` chips in a 1-D chain.

    Chip ``k`` trains the weighted layers ``splits[k]``; between chips ``k`` and
    ``k+1`` a :class:`~fpdeep.rtl.link.endpoint.LinkPair` (two link endpoints and two
    simulated PHYs) carries activations down on the ACT virtual channel, in the
    host's sample format, and errors back up on the ERR channel, as framed rows.
    Every chip counts the samples itself and steps SGD after the same sample, so
    the cluster trains exactly as one chip does: synchronous mini-batch SGD, equal
    to the integer reference bit for bit at any split.

    Parameters
    ----------
    network : Network
    splits : list of (first, stop)
        Contiguous ranges of weighted layers, one per chip, covering them all.
    link_config : LinkConfig, optional
    link_latency : int
        Wire latency of each link, in cycles.
    slots : int or list of int
        Feature-memory slots of each chip: how many samples its forward path may
        run ahead of its backward path (the round trip behind it needs about
        ``1 + round trip / sample period``).
    **core_args
        Passed to every chip (masters, numerics, batch_size, lr, momentum, engines).

    Members
    -------
    host : Out(HostSignature())
        Chip 0's host port. ``correct`` is counted by the last chip (the loss),
        ``saturations`` summed over chips; weights are chip 0's.
    err_masks : In(word_width).array(2 * (N - 1))
        Bit-error masks of the wires, down and up for each link in turn.
    """

    def __init__(self, network, *, splits, link_config=None, link_latency=4, slots=2,
                 **core_args):
        count = len(network_layers(network))
        if not splits:
            raise FpdeepError("a cluster needs at least one chip")
        expected = 0
        for chip, span in enumerate(splits):
            first, stop = span
            if first != expected or stop <= first:
                raise FpdeepError(f"chip {chip}: layers {span!r} do not continue the chain "
                                  f"at weighted layer {expected}")
            expected = stop
        if expected != count:
            raise FpdeepError(f"the chips cover {expected} of the {count} weighted layers")
        self.link_config = link_config or LinkConfig()
        slots = list(slots) if isinstance(slots, (list, tuple)) else [slots] * len(splits)
        if len(slots) != len(splits):
            raise FpdeepError(f"{len(slots)} feature-memory depths given for "
                              f"{len(splits)} chips")
        self.chips = [TrainingCore(network, layers=tuple(span), slots=depth, **core_args)
                      for span, depth in zip(splits, slots)]
        self.links = [LinkPair(self.link_config, latency=link_latency)
                      for _ in range(len(splits) - 1)]
        super().__init__({
            "host": Out(HostSignature()),
            "err_masks": In(self.link_config.word_width).array(max(1, 2 * len(self.links))),
        })

    def elaborate(self, platform):
        m = Module()
        for k, chip in enumerate(self.chips):
            m.submodules[f"chip{k}"] = chip
        act, err = VirtualChannel.ACT, VirtualChannel.ERR
        for k, link in enumerate(self.links):
            m.submodules[f"link{k}"] = link
            up, down = self.chips[k], self.chips[k + 1]
            m.d.comb += [link.err_ab.eq(self.err_masks[2 * k]),
                         link.err_ba.eq(self.err_masks[2 * k + 1])]
            _join(m, up.act_out, link.a_i[act])          # activations down ...
            _join(m, link.b_o[act], down.host.sample)    # ... into the next chip's loader
            _join(m, down.err_out, link.b_i[err])        # errors up ...
            _join(m, link.a_o[err], up.err_in)
            for vc in (VirtualChannel.WGT, VirtualChannel.CTL):
                m.d.comb += [link.a_i[vc].valid.eq(0), link.b_i[vc].valid.eq(0),
                             link.a_o[vc].ready.eq(1), link.b_o[vc].ready.eq(1)]

        first, last = self.chips[0], self.chips[-1]
        host = self.host
        _join(m, host.sample, first.host.sample)
        m.d.comb += [
            first.host.weight_addr.eq(host.weight_addr),
            first.host.weight_read.eq(host.weight_read),
            first.host.weight_write.eq(host.weight_write),
            first.host.weight_wdata.eq(host.weight_wdata),
            host.weight_rdata.eq(first.host.weight_rdata),
            host.weight_rvalid.eq(first.host.weight_rvalid),
            host.weight_count.eq(first.host.weight_count),
            host.samples.eq(first.host.samples),
            host.batches.eq(first.host.batches),
            host.correct.eq(last.host.correct),
            host.saturations.eq(sum(chip.host.saturations for chip in self.chips)),
            host.busy.eq(Cat(*[chip.host.busy for chip in self.chips]).any()),
        ]
        for chip in self.chips[1:]:
            m.d.comb += [chip.host.weight_read.eq(0), chip.host.weight_write.eq(0)]
        return m


def _join(m, source, sink):
    """Connect two streams whose payloads have the same width (signed or not)."""
    m.d.comb += [sink.valid.eq(source.valid), sink.payload.eq(source.payload),
                 source.ready.eq(sink.ready)]
