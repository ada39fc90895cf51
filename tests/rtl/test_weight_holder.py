import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import fifo, memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.conv import ConvGeometry, pack_conv_weights, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.rtl.numerics import master_to_weight_np, saturate_np, sgd_step_np
from fpdeep.rtl.weight_holder import WeightHolder
from fpdeep.rtl.weight_update import (ExchangeOp, WeightUpdateUnit, gradient_index_count,
                                      gradient_words, pack_lanes)
from fpdeep.sim.reference import conv_weight_grad_acc


class Gate(Elaboratable):
    """A word FIFO standing in for one direction of the link's WGT channel.

    ``stall`` low refuses the producer; ``gap`` low keeps a new word from being
    offered to the consumer (an offered word stays offered until taken). ``words``
    counts the words that entered.
    """

    def __init__(self, producer, consumer, depth=4):
        self.producer, self.consumer = producer, consumer
        self.fifo = fifo.SyncFIFOBuffered(width=16, depth=depth)
        self.stall = Signal(init=1)
        self.gap = Signal(init=1)
        self.words = Signal(32)

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = self.fifo
        p, c = self.producer, self.consumer
        offered = Signal()
        valid = q.r_rdy & (self.gap | offered)
        m.d.comb += [
            q.w_data.eq(p.payload),
            q.w_en.eq(p.valid & self.stall),
            p.ready.eq(q.w_rdy & self.stall),
            c.payload.eq(q.r_data),
            c.valid.eq(valid),
            q.r_en.eq(c.ready & valid),
        ]
        m.d.sync += offered.eq(valid & ~c.ready)
        with m.If(q.w_en & q.w_rdy):
            m.d.sync += self.words.eq(self.words + 1)
        return m


class Pair(Elaboratable):
    """An owner (``remote=True``) and its holder, joined by two gated word FIFOs."""

    def __init__(self, owner, holder):
        self.owner, self.holder = owner, holder
        g = owner._g
        self.e_mem = memory.Memory(shape=owner.e_rd.data.shape(),
                                   depth=owner.engine.e_layout.depth, init=[])
        self.x_mem = memory.Memory(shape=owner.x_rd.data.shape(), depth=g.cin * g.h, init=[])
        self.out = Gate(owner.grads_out, holder.grads_in)
        self.back = Gate(holder.copies_out, owner.copies_in)

    def elaborate(self, platform):
        m = Module()
        m.submodules.owner, m.submodules.holder = self.owner, self.holder
        m.submodules.e_mem, m.submodules.x_mem = self.e_mem, self.x_mem
        m.submodules.out, m.submodules.back = self.out, self.back
        wiring.connect(m, self.owner.e_rd, self.e_mem.read_port())
        wiring.connect(m, self.owner.x_rd, self.x_mem.read_port())
        return m


def stream_rules(stream, name):
    """A background testbench asserting that ``valid`` and the payload hold until taken."""
    async def tb(ctx):
        held = None
        async for _, _, valid, ready, payload in ctx.tick().sample(
                stream.valid, stream.ready, stream.payload):
            if held is not None:
                assert valid, f"{name}: valid dropped before the transfer"
                assert payload == held, f"{name}: payload changed before the transfer"
            held = payload if valid and not ready else None
    return tb


def random_gates(pair, seed, p):
    async def tb(ctx):
        rng = random.Random(seed)
        gates = [pair.out.stall, pair.out.gap, pair.back.stall, pair.back.gap]
        async for _ in ctx.tick():
            for gate in gates:
                ctx.set(gate, rng.random() >= p)
    return tb


def host_read(ctx, holder, addr):
    async def read():
        ctx.set(holder.host_addr, addr)
        ctx.set(holder.host_read, 1)
        await ctx.tick()
        ctx.set(holder.host_read, 0)
        assert ctx.get(holder.host_rvalid)
        return ctx.get(holder.host_rdata)
    return read()


def unpack_masters(words, g):
    """``(W, b)`` from the words of a master (or velocity) memory."""
    w = np.zeros((g.cout, g.cin, g.kh, g.kw), dtype=np.int64)
    b = np.zeros(g.cout, dtype=np.int64)
    per = gradient_index_count(g)
    for o in range(g.cout):
        for j in range(g.cin * g.kh):
            w[o, j // g.kh, j % g.kh] = list(words[o * per + j])
        b[o] = words[o * per + g.cin * g.kh][0]
    return w, b


CASES = [
    # cin, cout, h, w, kh, kw, ph, pw, wu_rows, fp_rows, bp_rows, momentum
    pytest.param((2, 3, 5, 5, 3, 3, 1, 1, 2, 2, 2, 0.9), id="conv-momentum"),
    pytest.param((2, 3, 4, 5, 3, 2, 1, 0, 3, 2, None, 0.0), id="conv-first-layer"),
    pytest.param((3, 4, 2, 2, 2, 2, 0, 0, 4, 4, 3, 0.9), id="fc-momentum"),
    pytest.param((3, 4, 2, 2, 2, 2, 0, 0, 2, 3, 2, 0.0), id="fc"),
]


@pytest.mark.parametrize("case", CASES)
def test_remote_update_matches_sgd_reference(case):
    cin, cout, h, w, kh, kw, ph, pw, wu_rows, fp_rows, bp_rows, momentum = case
    seed = sum(case[:8]) + int(momentum * 10)
    rng = np.random.default_rng(seed)
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    batch = 2
    master_w = N.master.from_float(rng.normal(0, 0.5, size=(cout, cin, kh, kw)))
    master_w[1, 0, 0, 0] = N.master.max - 5          # its copy saturates from the start
    master_b = N.master.from_float(rng.normal(0, 0.5, size=cout))
    rate_q = N.rate_from_float(0.5 / batch)
    momentum_q = N.rate_from_float(momentum) if momentum else 0
    kwargs = dict(numerics=N, masters=(master_w, master_b), rate_q=rate_q,
                  momentum_q=momentum_q, batch_size=batch)
    owner = WeightUpdateUnit(geometry=g, wu_rows=wu_rows, fp_rows=fp_rows, bp_rows=bp_rows,
                             remote=True, **kwargs)
    holder = WeightHolder(geometry=g, **kwargs)
    assert owner.master is None and owner.velocity is None and owner.host_span == 0
    assert (holder.host_span, holder.kx_bits, holder.words_per_channel) == \
        (WeightUpdateUnit(geometry=g, wu_rows=wu_rows, fp_rows=fp_rows, bp_rows=bp_rows,
                          **kwargs).host_span, owner.kx_bits, owner.words_per_channel)
    pair = Pair(owner, holder)

    batches = []
    for k in range(2):
        samples = []
        for _ in range(batch):
            x = rng.integers(-2000, 2000, size=(cin, h, w))
            e = rng.integers(-3000, 3000, size=(cout, g.ho, g.wo))
            if k == 0:
                # Full-range products: channel 0's sums saturate the gradient format,
                # then its velocities, masters and copies saturate.
                x[0] = N.act.min
                e[0] = N.error.min
            samples.append((x, e))
        batches.append(samples)

    # Reference, and the gradient saturations the owner counts.
    ref_w, ref_b = master_w.copy(), master_b.copy()
    vel_w, vel_b = np.zeros_like(ref_w), np.zeros_like(ref_b)
    ref_sat = grad_sat = 0
    for samples in batches:
        grads = [conv_weight_grad_acc(x, e, kh, kw, ph, pw, N.act.one) for x, e in samples]
        gw, gb = sum(gr[0] for gr in grads), sum(gr[1] for gr in grads)
        grad_sat += saturate_np(gw, N.grad)[1] + saturate_np(gb, N.grad)[1]
        ref_w, vel_w, sw = sgd_step_np(ref_w, vel_w, gw, N, rate_q, momentum_q)
        ref_b, vel_b, sb = sgd_step_np(ref_b, vel_b, gb, N, rate_q, momentum_q)
        ref_sat += sw + sb + master_to_weight_np(ref_w, N)[1] + master_to_weight_np(ref_b, N)[1]
    assert grad_sat > 0 and ref_sat > grad_sat
    weights = g.cout * (g.cin * g.kh * g.kw + 1)
    parts = gradient_words(N)

    async def wait_idle(ctx):
        await ctx.tick()
        for _ in range(20 * weights + 2000):
            if not (ctx.get(owner.busy) or ctx.get(holder.busy)):
                return
            await ctx.tick()
        raise AssertionError("the owner or the holder is still busy")

    def check_copies(ctx, wq, bq):
        for a, word in enumerate(pack_conv_weights(wq, bq, fp_rows)):
            assert list(ctx.get(owner.fp_weights.data[a])) == word, a
        if bp_rows:
            flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
            for a, word in enumerate(pack_conv_weights(flipped, None, bp_rows)):
                assert list(ctx.get(owner.bp_weights.data[a])) == word, a

    async def tb(ctx):
        for samples in batches:
            for x, e in samples:
                for a, word in enumerate(pack_lanes(e, wu_rows)):
                    ctx.set(pair.e_mem.data[a], word)
                for a, word in enumerate(pack_rows(x)):
                    ctx.set(pair.x_mem.data[a], word)
                ctx.set(owner.start_sample, 1)
                await ctx.tick()
                ctx.set(owner.start_sample, 0)
                await wait_idle(ctx)
            ctx.set(owner.start_update, 1)
            await ctx.tick()
            ctx.set(owner.start_update, 0)
            await wait_idle(ctx)
        assert ctx.get(pair.out.words) == 2 * (1 + parts * weights)
        assert ctx.get(pair.back.words) == 2 * weights

        # The holder's masters and velocities, in its memories and through its host port.
        got_w, got_b = unpack_masters([ctx.get(holder.master.data[a])
                                       for a in range(holder.words)], g)
        np.testing.assert_array_equal(got_w, ref_w)
        np.testing.assert_array_equal(got_b, ref_b)
        if momentum:
            got_vw, got_vb = unpack_masters([ctx.get(holder.velocity.data[a])
                                             for a in range(holder.words)], g)
            np.testing.assert_array_equal(got_vw, vel_w)
            np.testing.assert_array_equal(got_vb, vel_b)
        for o, j, k in [(0, 0, 0), (cout - 1, cin * kh - 1, kw - 1), (1, cin * kh, 0)]:
            word = o * owner.words_per_channel + j
            value = await host_read(ctx, holder, (word << holder.kx_bits) | k)
            expect = ref_b[o] if j == cin * kh else ref_w[o, j // kh, j % kh, k]
            assert value == expect
        # The owner's copies and cleared sums; the saturations split between the two.
        wq, bq = master_to_weight_np(ref_w, N)[0], master_to_weight_np(ref_b, N)[0]
        check_copies(ctx, wq, bq)
        for a in range(owner.words):
            assert all(v == 0 for v in ctx.get(owner.grads.data[a])), "gradients cleared"
        assert ctx.get(owner.saturations) == grad_sat
        assert ctx.get(owner.saturations) + ctx.get(holder.saturations) == ref_sat

        # The host writes masters on the holder's chip; a refresh brings their copies.
        new_w, new_b = ref_w.copy(), ref_b.copy()
        new_w[0, 0, 0, kw - 1] = N.master.min
        new_b[cout - 1] = 12345678
        for addr, value in [((kw - 1), N.master.min),
                            ((owner.words - 1) << holder.kx_bits, 12345678)]:
            ctx.set(holder.host_addr, addr)
            ctx.set(holder.host_wdata, value)
            ctx.set(holder.host_write, 1)
            await ctx.tick()
        ctx.set(holder.host_write, 0)
        ctx.set(owner.start_refresh, 1)
        await ctx.tick()
        ctx.set(owner.start_refresh, 0)
        await wait_idle(ctx)
        assert ctx.get(pair.out.words) == 2 * (1 + parts * weights) + 1
        assert ctx.get(pair.back.words) == 3 * weights
        (wq, sw), (bq, sb) = master_to_weight_np(new_w, N), master_to_weight_np(new_b, N)
        check_copies(ctx, wq, bq)
        assert ctx.get(owner.saturations) == grad_sat
        assert ctx.get(holder.saturations) == ref_sat - grad_sat + sw + sb
        got_w, got_b = unpack_masters([ctx.get(holder.master.data[a])
                                       for a in range(holder.words)], g)
        np.testing.assert_array_equal(got_w, new_w)
        np.testing.assert_array_equal(got_b, new_b)

    sim = Simulator(pair)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_testbench(random_gates(pair, seed, 0.4), background=True)
    for name, stream in [("grads_out", owner.grads_out), ("grads_in", holder.grads_in),
                         ("copies_out", holder.copies_out), ("copies_in", owner.copies_in)]:
        sim.add_testbench(stream_rules(stream, name), background=True)
    sim.run()


def test_holder_alone_with_one_word_gradients():
    """With a 16-bit gradient format each weight is one word; the holder then takes one
    every other cycle. A stalled ``copies_out`` stops ``grads_in`` once the copy FIFO's
    room is spoken for, and nothing is lost."""
    from fpdeep.rtl.numerics import FixedFormat, Numerics
    n = Numerics(act=FixedFormat(8, 4), error=FixedFormat(8, 4), grad_width=16,
                 master=FixedFormat(32, 20))
    g = ConvGeometry(cin=2, cout=2, h=3, w=3, kh=2, kw=2)
    rng = np.random.default_rng(5)
    master_w = n.master.from_float(rng.normal(0, 2.0, size=(2, 2, 2, 2)))
    master_b = n.master.from_float(rng.normal(0, 2.0, size=2))
    rate_q, momentum_q = n.rate_from_float(0.5), n.rate_from_float(0.5)
    holder = WeightHolder(geometry=g, numerics=n, masters=(master_w, master_b), rate_q=rate_q,
                          momentum_q=momentum_q, batch_size=1)
    gw = rng.integers(-40000, 40000, size=master_w.shape)     # some saturate to 16 bits
    gb = rng.integers(-40000, 40000, size=master_b.shape)
    gw_sat, gb_sat = saturate_np(gw, n.grad)[0], saturate_np(gb, n.grad)[0]
    ref_w, vel_w, sw = sgd_step_np(master_w, np.zeros_like(master_w), gw_sat, n, rate_q,
                                   momentum_q)
    ref_b, vel_b, sb = sgd_step_np(master_b, np.zeros_like(master_b), gb_sat, n, rate_q,
                                   momentum_q)
    (wq, cw), (bq, cb) = master_to_weight_np(ref_w, n), master_to_weight_np(ref_b, n)
    assert sw + sb + cw + cb > 0
    words, expect = [], []
    for o in range(2):
        words += [int(v) for v in gw_sat[o].reshape(-1)] + [int(gb_sat[o])]
        expect += [int(v) for v in wq[o].reshape(-1)] + [int(bq[o])]
    taken = []
    sent = []
    depth = holder.COPY_FIFO_DEPTH

    async def source(ctx):
        ctx.set(holder.grads_in.valid, 1)
        for word in [ExchangeOp.UPDATE.value] + words:
            ctx.set(holder.grads_in.payload, word)
            await ctx.tick().until(holder.grads_in.ready)
            sent.append(word)
        ctx.set(holder.grads_in.valid, 0)

    async def sink(ctx):
        for _ in range(40):
            await ctx.tick()
        # The op and as many weights as the FIFO has room for (one entry short).
        assert len(sent) == 1 + depth - 1
        assert ctx.get(holder.busy)
        ctx.set(holder.copies_out.ready, 1)
        for _ in range(20 * len(expect)):
            if len(taken) == len(expect):
                break
            _, _, valid, payload = await ctx.tick().sample(holder.copies_out.valid,
                                                           holder.copies_out.payload)
            if valid:
                taken.append(payload)
        ctx.set(holder.copies_out.ready, 0)
        await ctx.tick()
        assert not ctx.get(holder.busy)
        assert not ctx.get(holder.copies_out.valid)
        got_w, got_b = unpack_masters([ctx.get(holder.master.data[a])
                                       for a in range(holder.words)], g)
        np.testing.assert_array_equal(got_w, ref_w)
        np.testing.assert_array_equal(got_b, ref_b)
        got_vw, got_vb = unpack_masters([ctx.get(holder.velocity.data[a])
                                         for a in range(holder.words)], g)
        np.testing.assert_array_equal(got_vw, vel_w)
        np.testing.assert_array_equal(got_vb, vel_b)
        assert ctx.get(holder.saturations) == sw + sb + cw + cb

    sim = Simulator(holder)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(stream_rules(holder.copies_out, "copies_out"), background=True)
    sim.run()
    assert taken == expect


@pytest.mark.parametrize("geometry", [
    pytest.param(ConvGeometry(cin=1, cout=4, h=8, w=8, kh=3, kw=3, ph=1, pw=1), id="digits-conv"),
    pytest.param(ConvGeometry(cin=4, cout=10, h=4, w=4, kh=4, kw=4), id="digits-fc"),
])
def test_exchange_cycles(geometry):
    """Wired straight to its holder, an owner is busy ``words + gradient_words * weights
    + 7`` cycles after ``start_update`` (a local unit: ``words + weights + 5``) and
    ``2 * weights + 8`` after ``start_refresh``."""
    g = geometry
    masters = (np.zeros((g.cout, g.cin, g.kh, g.kw), dtype=np.int64),
               np.zeros(g.cout, dtype=np.int64))
    kwargs = dict(numerics=N, masters=masters, rate_q=100, momentum_q=60000, batch_size=4)
    local = WeightUpdateUnit(geometry=g, wu_rows=2, fp_rows=2, bp_rows=1, **kwargs)
    owner = WeightUpdateUnit(geometry=g, wu_rows=2, fp_rows=2, bp_rows=1, remote=True, **kwargs)
    holder = WeightHolder(geometry=g, **kwargs)

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            for name, unit in [("local", local), ("owner", owner)]:
                m.submodules[name] = unit
                for port, depth in [("e_rd", unit.engine.e_layout.depth), ("x_rd", g.cin * g.h)]:
                    mem = memory.Memory(shape=getattr(unit, port).data.shape(), depth=depth,
                                        init=[])
                    m.submodules[f"{name}_{port}"] = mem
                    wiring.connect(m, getattr(unit, port), mem.read_port())
            m.submodules.holder = holder
            wiring.connect(m, owner.grads_out, holder.grads_in)
            wiring.connect(m, holder.copies_out, owner.copies_in)
            return m

    got = {}

    async def busy_cycles(ctx, start, busy):
        ctx.set(start, 1)
        await ctx.tick()
        ctx.set(start, 0)
        cycles = 0                      # cycles busy after the start pulse
        while ctx.get(busy):
            assert cycles < 10_000
            await ctx.tick()
            cycles += 1
        return cycles

    async def tb(ctx):
        got["local"] = await busy_cycles(ctx, local.start_update, local.busy)
        got["update"] = await busy_cycles(ctx, owner.start_update, owner.busy)
        assert not ctx.get(holder.busy)
        got["refresh"] = await busy_cycles(ctx, owner.start_refresh, owner.busy)

    sim = Simulator(Top())
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    words = g.cout * gradient_index_count(g)
    weights = g.cout * (g.cin * g.kh * g.kw + 1)
    assert got == {"local": words + weights + 5,
                   "update": words + gradient_words(N) * weights + 7,
                   "refresh": 2 * weights + 8}


def test_parameters_are_checked():
    from fpdeep.rtl.numerics import FixedFormat, Numerics
    g = ConvGeometry(cin=1, cout=2, h=3, w=3, kh=2, kw=2)
    masters = (np.zeros((2, 1, 2, 2), dtype=np.int64), np.zeros(2, dtype=np.int64))
    kwargs = dict(geometry=g, numerics=N, masters=masters, rate_q=100, momentum_q=0,
                  batch_size=2)
    owner = WeightUpdateUnit(wu_rows=2, fp_rows=2, bp_rows=None, remote=True, **kwargs)
    assert "grads_out" in owner.signature.members and "copies_in" in owner.signature.members
    assert "host_addr" not in owner.signature.members
    local = WeightUpdateUnit(wu_rows=2, fp_rows=2, bp_rows=None, **kwargs)
    assert "grads_out" not in local.signature.members
    with pytest.raises(ValueError, match="remote"):
        WeightUpdateUnit(wu_rows=2, fp_rows=2, bp_rows=None, remote=1, **kwargs)
    with pytest.raises(ValueError, match="rate_q"):
        WeightHolder(**{**kwargs, "rate_q": 1 << 16})
    with pytest.raises(ValueError, match="momentum_q"):
        WeightHolder(**{**kwargs, "momentum_q": -1})
    with pytest.raises(ValueError, match="batch_size"):
        WeightHolder(**{**kwargs, "batch_size": 0})
    with pytest.raises(ValueError, match="masters"):
        WeightHolder(**{**kwargs, "masters": (masters[0][:1], masters[1])})
    wide = Numerics(weight=FixedFormat(18, 12), master=FixedFormat(32, 20))
    with pytest.raises(ValueError, match="exchange word"):
        WeightHolder(**{**kwargs, "numerics": wide})
    with pytest.raises(ValueError, match="exchange word"):
        WeightUpdateUnit(wu_rows=2, fp_rows=2, bp_rows=None, remote=True,
                         **{**kwargs, "numerics": wide})
