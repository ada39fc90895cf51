"""A chain of training chips joined by reliable serial links, in simulation."""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..plan.errors import FpdeepError
from .core import TrainingCore, network_layers
from .masters import init_masters
from .numerics import DEFAULT_NUMERICS as N
from .host import HostSignature
from .link.channels import VirtualChannel
from .link.endpoint import LinkPair
from .link.board_phy import MAX_CC_INTERVAL
from .link.pins_sim import BoardLinkPair
from .control import WeightAccessRouter, connect_weight_port
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
    splits : list of (first, stop) or (first, stop, (lo, hi))
        Per chip, a contiguous range of weighted layers, or one layer's output
        channels ``lo .. hi`` (a layer split across consecutive chips, in channel
        order); together they cover every layer and channel once.
    link_config : LinkConfig, optional
    link_latency : int
        Wire latency of each link, in cycles (``phy="sim"``).
    phy : "sim" or "board"
        What carries each link: two :class:`~fpdeep.rtl.link.phy.SimPhy` wires
        (default), or two :class:`~fpdeep.rtl.link.board_phy.BoardPhy` s through the
        bit-level channel model (:class:`~fpdeep.rtl.link.pins_sim.BoardLinkPair`,
        ``board_lanes`` lanes each way). The chips still share the ``sync`` clock; link
        ``k``'s two link clocks are the domains in :attr:`link_clocks`, which the
        simulation must add.
    held : dict, optional
        ``{chip: layer}``: chip ``k``'s layer whose masters and velocities chip
        ``k + 1`` holds (weight balancing). Once per mini-batch the owner sends its
        gradient sums down on the WGT channel, the holder steps SGD and sends the new
        16-bit copies back; the host reaches those masters on the holder.
    engines : dict or list of dict, optional
        ``{layer: EngineSizes}`` for every chip, or one such dict per chip.
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
        ``saturations`` summed over chips. Weight addresses cover every chip, the
        chips' spaces end to end (:class:`~fpdeep.rtl.control.WeightAccessRouter`
        on each, over the links' CTL channel).
    err_masks : In(word_width).array(2 * (N - 1))
        Bit-error masks of the wires, down and up for each link in turn (with
        ``phy="board"``, ``2 * board_lanes`` bits per cycle of the wire's link clock).
    perf_link_words : Out(ArrayLayout(32, (N - 1) * 6))
        Payload words sent per link and :attr:`LINK_TRAFFIC` channel.
    """

    def __init__(self, network, *, splits, link_config=None, link_latency=4, slots=2,
                 engines=None, held=(), phy="sim", board_lanes=4, **core_args):
        if phy not in ("sim", "board"):
            raise ValueError(f"phy must be 'sim' or 'board', not {phy!r}")
        specs = network_layers(network)
        if not splits:
            raise FpdeepError("a cluster needs at least one chip")
        chips, layer, channel = [], 0, 0
        for chip, span in enumerate(splits):
            first, stop, *rest = span
            cout = specs[min(max(stop, 1), len(specs)) - 1].geometry.cout
            lo, hi = rest[0] if rest and rest[0] is not None else (0, cout)
            if first != layer or stop <= first or lo != channel:
                where = (f"weighted layer {layer}" if channel == 0 else
                         f"channel {channel} of layer {specs[layer].name!r}")
                raise FpdeepError(f"chip {chip}: {span!r} does not continue the chain at "
                                  f"{where}")
            if (lo, hi) != (0, cout) and stop != first + 1:
                raise FpdeepError(f"chip {chip}: {span!r}: a chip holding some of a layer's "
                                  f"channels must hold that layer alone")
            chips.append((first, stop, None if (lo, hi) == (0, cout) else (lo, hi)))
            channel = hi if hi < cout else 0
            layer = stop if channel == 0 else first
        if layer != len(specs) or channel != 0:
            raise FpdeepError(f"the chips cover {layer} of the {len(specs)} weighted layers"
                              + (f" and {channel} channels of layer {specs[layer].name!r}"
                                 if channel else ""))
        self.link_config = link_config or LinkConfig(
            cc_interval=MAX_CC_INTERVAL if phy == "board" else None)
        slots = list(slots) if isinstance(slots, (list, tuple)) else [slots] * len(splits)
        if len(slots) != len(splits):
            raise FpdeepError(f"{len(slots)} feature-memory depths given for "
                              f"{len(splits)} chips")
        engines = (list(engines) if isinstance(engines, (list, tuple)) else
                   [engines] * len(splits))
        if len(engines) != len(splits):
            raise FpdeepError(f"{len(engines)} engine sizings given for {len(splits)} chips")
        # Weight balancing: chip k's layer whose masters chip k + 1 holds.
        self.held = dict(held)
        for owner, layer in self.held.items():
            first, stop, _ = chips[owner] if 0 <= owner < len(chips) else (0, 0, None)
            if owner + 1 >= len(chips) or layer not in [s.name for s in specs[first:stop]]:
                raise FpdeepError(f"held weights: chip {owner} has no layer {layer!r} and a "
                                  f"chip behind it to hold its masters")
        if self.held and core_args.get("masters") is None:
            core_args["masters"] = init_masters(network, core_args.get("numerics", N),
                                                core_args.get("seed", 0))
        self.chips = []
        hold = None
        for k, ((first, stop, channels), depth, sizes) in enumerate(zip(chips, slots,
                                                                      engines)):
            names = {spec.name for spec in specs[first:stop]}
            sizes = {name: size for name, size in (sizes or {}).items() if name in names}
            remote = (self.held[k],) if k in self.held else ()
            chip = TrainingCore(network, layers=(first, stop), channels=channels, slots=depth,
                                engines=sizes, remote=remote, hold=hold, **core_args)
            self.chips.append(chip)
            hold = None
            if remote:
                spec = next(s for s in chip.specs if s.name == remote[0])
                w, b = core_args["masters"][spec.name]
                lo, hi = (chip.lo, chip.hi) if chip.split else (0, spec.geometry.cout)
                hold = dict(layer=spec.name, lo=lo, hi=hi, geometry=spec.geometry,
                            masters=(w[lo:hi], b[lo:hi]))
        if phy == "sim":
            self.links = [LinkPair(self.link_config, latency=link_latency)
                          for _ in range(len(splits) - 1)]
        else:
            self.links = [BoardLinkPair(self.link_config, lanes=board_lanes, domains={
                "a": "sync", "b": "sync", "a_link": f"link{k}_down", "b_link": f"link{k}_up"})
                for k in range(len(splits) - 1)]
        #: ``(domain, link_ratio)`` of every link clock the simulation must add: its
        #: period is the core clock's divided by ``link_ratio`` (``phy="board"``).
        self.link_clocks = [(link.domains[end], link.link_ratio) for link in self.links
                            for end in ("a_link", "b_link")] if phy == "board" else []
        err_width = len(self.links[0].err_ab) if self.links else self.link_config.word_width
        super().__init__({
            "host": Out(HostSignature()),
            "err_masks": In(err_width).array(max(1, 2 * len(self.links))),
            "perf_link_words": Out(data.ArrayLayout(32, max(1, len(self.links) * len(
                self.LINK_TRAFFIC)))),
        })

    #: What ``perf_link_words`` counts for each link, in this order: payload words
    #: taken by the link's sending ends (direction, virtual channel).
    LINK_TRAFFIC = (("down", "act"), ("up", "err"), ("down", "wgt"), ("up", "wgt"),
                    ("down", "ctl"), ("up", "ctl"))

    def weight_address(self, layer, o, i=None, ky=0, kx=0):
        """Host address of weight ``(o, i, ky, kx)`` of ``layer`` (bias ``o`` if ``i`` is None)."""
        base = 0
        for chip in self.chips:
            names = [spec.name for spec in chip.specs]
            if chip.held is not None and chip.held[0] == layer and \
                    chip.held[1] <= o < chip.held[2]:
                return base + chip.weight_address(layer, o - chip.held[1], i, ky, kx,
                                                  held=True)
            if layer in names and layer != chip.remote_layer:   # (else held behind)
                if not chip.split:
                    return base + chip.weight_address(layer, o, i, ky, kx)
                if chip.lo <= o < chip.hi:
                    return base + chip.weight_address(layer, o - chip.lo, i, ky, kx)
            base += chip.weight_space
        raise FpdeepError(f"no chip holds output channel {o} of layer {layer!r}")

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
            wgt = VirtualChannel.WGT
            if k in self.held:
                _join(m, up.wgt_out, link.a_i[wgt])         # gradient sums down ...
                _join(m, link.b_o[wgt], down.held_in)       # ... to the holder
                _join(m, down.held_out, link.b_i[wgt])      # new copies up ...
                _join(m, link.a_o[wgt], up.wgt_in)          # ... to the owner
            else:
                m.d.comb += [link.a_i[wgt].valid.eq(0), link.b_i[wgt].valid.eq(0),
                             link.a_o[wgt].ready.eq(1), link.b_o[wgt].ready.eq(1)]

        for k, link in enumerate(self.links):
            ends = {"down": link.a_i, "up": link.b_i}
            for j, (direction, vc) in enumerate(self.LINK_TRAFFIC):
                port = ends[direction][getattr(VirtualChannel, vc.upper())]
                counter = self.perf_link_words[k * len(self.LINK_TRAFFIC) + j]
                with m.If(port.valid & port.ready):
                    m.d.sync += counter.eq(counter + 1)

        # Weight access: each chip's router serves its own span of the cluster's
        # weight addresses and passes the others down on the CTL channel.
        ctl = VirtualChannel.CTL
        total = sum(chip.weight_space for chip in self.chips)
        routers, base = [], 0
        for k, chip in enumerate(self.chips):
            router = WeightAccessRouter(base=base, local_count=chip.weight_space,
                                        total_count=total, has_next=k < len(self.chips) - 1,
                                        has_prev=k > 0)
            m.submodules[f"weights{k}"] = router
            connect_weight_port(m, router.local, chip.host)
            if k < len(self.chips) - 1:
                m.d.comb += chip.refresh_request.eq(router.wrote_beyond)
            routers.append(router)
            base += chip.weight_space
        for k, link in enumerate(self.links):
            _join(m, routers[k].down_o, link.a_i[ctl])
            _join(m, link.b_o[ctl], routers[k + 1].up_i)
            _join(m, routers[k + 1].up_o, link.b_i[ctl])
            _join(m, link.a_o[ctl], routers[k].down_i)

        first, last = self.chips[0], self.chips[-1]
        host = self.host
        # Samples wait until every weight write has landed: a chip drops writes
        # while it trains.
        writes_landed = ~routers[0].pending
        m.d.comb += [first.host.sample.valid.eq(host.sample.valid & writes_landed),
                     first.host.sample.payload.eq(host.sample.payload),
                     host.sample.ready.eq(first.host.sample.ready & writes_landed)]
        connect_weight_port(m, host, routers[0].host)
        m.d.comb += [
            host.samples.eq(first.host.samples),
            host.batches.eq(first.host.batches),
            host.correct.eq(last.host.correct),       # the last chip holds the loss
            host.loss_sum.eq(last.host.loss_sum),
            host.saturations.eq(sum(chip.host.saturations for chip in self.chips)),
            host.busy.eq(Cat(*[chip.host.busy for chip in self.chips]).any() |
                         routers[0].full),
        ]
        return m


def _join(m, source, sink):
    """Connect two streams whose payloads have the same width (signed or not)."""
    m.d.comb += [sink.valid.eq(source.valid), sink.payload.eq(source.payload),
                 source.ready.eq(sink.ready)]
