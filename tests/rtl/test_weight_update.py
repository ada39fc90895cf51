import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep.rtl.conv import ConvGeometry, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.rtl.fc import pack_fc_bp_weights
from fpdeep.rtl.weight_update import WeightGradientEngine, pack_lanes, gradient_index_count
from fpdeep.sim.reference import conv_weight_grad_acc
from tests.rtl.test_conv import EngineBench, StreamingBench
from tests.stream_helpers import StreamDriver
from hypothesis import given, settings, strategies as st



CASES = [
    (1, 4, 8, 8, 3, 3, 1, 1, 4),       # digits conv
    (2, 3, 5, 7, 1, 1, 0, 0, 2),       # 1x1, non-square, ragged lanes
    (3, 5, 6, 4, 3, 2, 1, 0, 3),       # non-square kernel
    (4, 10, 4, 4, 4, 4, 0, 0, 10),     # digits FC
]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_gradients_match_reference(case, streamed):
    """With ``streamed``, the error rows are written a row (every channel's) at a time
    after start, as BP produces them, and the engine waits for each row it reads."""
    _gradients_match(case, streamed)


def _gradients_match(case, streamed, lanes=1):
    cin, cout, h, w, kh, kw, ph, pw, rows = case
    rng = np.random.default_rng(sum(case))
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    x = rng.integers(N.act.min, N.act.max + 1, size=(cin, h, w))     # full range: large sums
    e = rng.integers(N.error.min, N.error.max + 1, size=(cout, g.ho, g.wo))
    e[e == 0] = 1                      # rows read before they are written would show
    gw, gb = conv_weight_grad_acc(x, e, kh, kw, ph, pw, N.act.one)
    engine = WeightGradientEngine(geometry=g, rows=rows, act_fmt=N.act, error_fmt=N.error,
                                  lanes=lanes)
    lanes = pack_lanes(e, rows)
    if streamed:
        bench = StreamingBench(engine, "e_rd", e_rd=len(lanes), x_rd=pack_rows(x))
    else:
        bench = EngineBench(engine, e_rd=lanes, x_rd=pack_rows(x))
    got_w = np.zeros_like(gw)
    got_b = np.zeros_like(gb)
    count = cout * gradient_index_count(g)
    driver = StreamDriver(random.Random(cin), stall=0.3)

    async def tb(ctx):
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        seen = set()
        for _ in range(count):
            beat = await driver.get(ctx, engine.o)
            key = (beat.channel, beat.index)
            assert key not in seen
            seen.add(key)
            sums = [beat.sums[c] for c in range(kw)]
            if beat.index == cin * kh:
                got_b[beat.channel] = sums[0]
                assert sums[1:] == [0] * (kw - 1)
            else:
                got_w[beat.channel, beat.index // kh, beat.index % kh] = sums
        ctx.set(engine.o.ready, 1)
        for _ in range(rows + kw + 8):
            assert not ctx.get(engine.o.valid)
            await ctx.tick()
        assert not ctx.get(engine.busy)

    async def rows_arrive(ctx):
        ctx.set(engine.e_ready, 0)
        layout = engine.e_layout
        for y in range(g.ho):
            for t in range(layout.tiles):
                for _ in range(5):
                    await ctx.tick()
                await bench.writer.put(ctx, layout.address(t, y),
                                       lanes[layout.address(t, y)])
            ctx.set(engine.e_ready, y + 1)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    if streamed:
        sim.add_testbench(rows_arrive, background=True)
    sim.run()
    np.testing.assert_array_equal(got_w, gw)
    np.testing.assert_array_equal(got_b, gb)


from fpdeep.rtl.numerics import sgd_step_np, master_to_weight_np
from fpdeep.rtl.weight_update import WeightUpdateUnit
from fpdeep.rtl.conv import pack_conv_weights


UPDATE_CASES = [
    # cin, cout, h, w, kh, kw, ph, pw, wu_rows, fp_rows, bp_rows, momentum
    (1, 4, 8, 8, 3, 3, 1, 1, 4, 4, None, 0.9),
    (3, 2, 4, 5, 3, 1, 1, 0, 2, 1, 2, 0.0),
    (4, 10, 4, 4, 4, 4, 0, 0, 10, 10, 4, 0.9),
]


@pytest.mark.parametrize("case", UPDATE_CASES + [(4, 10, 4, 4, 4, 4, 0, 0, 3, 10, 3, 0.9),
                                                 (3, 5, 1, 2, 1, 2, 0, 0, 5, 2, 2, 0.0)])
@pytest.mark.parametrize("matvec", [False, True])
def test_two_batches_match_sgd_reference(case, matvec):
    """With ``matvec`` (FC layers only): the FC gradient engine, the gradient lanes and
    the FC BP copy layout."""
    cin, cout, h, w, kh, kw, ph, pw, wu_rows, fp_rows, bp_rows, momentum = case
    rng = np.random.default_rng(sum(case[:8]))
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    if matvec and not g.is_matvec:
        pytest.skip("matvec is for one-pixel-output layers")
    batch = 2
    master_w = N.master.from_float(rng.normal(0, 0.5, size=(cout, cin, kh, kw)))
    master_w[0, 0, 0, 0] = N.master.max - 5          # pushed into saturation below
    master_b = N.master.from_float(rng.normal(0, 0.5, size=cout))
    rate_q = N.rate_from_float(0.5 / batch)
    momentum_q = N.rate_from_float(momentum) if momentum else 0
    unit = WeightUpdateUnit(geometry=g, wu_rows=wu_rows, fp_rows=fp_rows, bp_rows=bp_rows,
                            numerics=N, masters=(master_w, master_b), rate_q=rate_q,
                            momentum_q=momentum_q, batch_size=batch, matvec=matvec)
    bench = EngineBench(unit, e_rd=unit.engine.e_layout.depth, x_rd=g.cin * g.h)
    e_mem, x_mem = bench.memories["e_rd"], bench.memories["x_rd"]
    batches = []
    for _ in range(2):
        samples = []
        for s in range(batch):
            x = rng.integers(-2000, 2000, size=(cin, h, w))
            e = rng.integers(-3000, 3000, size=(cout, g.ho, g.wo))
            e[0] = -8000                                  # drives master_w[0,0,0,0] up
            x[0] = 1500
            samples.append((x, e))
        batches.append(samples)

    # Reference.
    ref_w, ref_b = master_w.copy(), master_b.copy()
    vel_w, vel_b = np.zeros_like(ref_w), np.zeros_like(ref_b)
    ref_sat = 0
    for samples in batches:
        gw = sum(conv_weight_grad_acc(x, e, kh, kw, ph, pw, N.act.one)[0] for x, e in samples)
        gb = sum(conv_weight_grad_acc(x, e, kh, kw, ph, pw, N.act.one)[1] for x, e in samples)
        ref_w, vel_w, sw = sgd_step_np(ref_w, vel_w, gw, N, rate_q, momentum_q)
        ref_b, vel_b, sb = sgd_step_np(ref_b, vel_b, gb, N, rate_q, momentum_q)
        ref_sat += sw + sb + master_to_weight_np(ref_w, N)[1] + master_to_weight_np(ref_b, N)[1]
    assert ref_sat > 0

    async def wait_idle(ctx):
        await ctx.tick()
        while ctx.get(unit.busy):
            await ctx.tick()

    async def tb(ctx):
        for samples in batches:
            for x, e in samples:
                for a, word in enumerate(pack_lanes(e, wu_rows)):
                    ctx.set(e_mem.data[a], word)
                for a, word in enumerate(pack_rows(x)):
                    ctx.set(x_mem.data[a], word)
                ctx.set(unit.start_sample, 1)
                await ctx.tick()
                ctx.set(unit.start_sample, 0)
                await wait_idle(ctx)
            ctx.set(unit.start_update, 1)
            await ctx.tick()
            ctx.set(unit.start_update, 0)
            await wait_idle(ctx)
        # Masters, through the host port.
        got_w = np.zeros_like(ref_w)
        got_b = np.zeros_like(ref_b)
        for o in range(cout):
            for j in range(cin * kh + 1):
                for k in range(kw if j < cin * kh else 1):
                    word = o * (cin * kh + 1) + j
                    ctx.set(unit.host_addr, (word << unit.kx_bits) | k)
                    ctx.set(unit.host_read, 1)
                    await ctx.tick()
                    ctx.set(unit.host_read, 0)
                    assert ctx.get(unit.host_rvalid)
                    value = ctx.get(unit.host_rdata)
                    if j < cin * kh:
                        got_w[o, j // kh, j % kh, k] = value
                    else:
                        got_b[o] = value
        np.testing.assert_array_equal(got_w, ref_w)
        np.testing.assert_array_equal(got_b, ref_b)
        # Copies.
        wq, bq = master_to_weight_np(ref_w, N)[0], master_to_weight_np(ref_b, N)[0]
        fp_words = pack_conv_weights(wq, bq, fp_rows)
        for a, word in enumerate(fp_words):
            assert list(ctx.get(unit.fp_weights.data[a])) == word, a
        if bp_rows and matvec:
            for a, word in enumerate(pack_fc_bp_weights(wq, bp_rows)):
                assert list(ctx.get(unit.bp_weights.data[a])) == word, a
        elif bp_rows:
            flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
            for a, word in enumerate(pack_conv_weights(flipped, None, bp_rows)):
                assert list(ctx.get(unit.bp_weights.data[a])) == word, a
        for lane in (unit.grads if matvec else [unit.grads]):
            for a in range(lane.depth):
                assert all(v == 0 for v in ctx.get(lane.data[a])), "gradients cleared"
        assert ctx.get(unit.saturations) == ref_sat

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("lanes", [2, 3, 8])
@pytest.mark.parametrize("case", CASES[:3])
def test_laned_gradients_match_reference(case, lanes):
    """Lanes over output pixels (``lanes`` up to ``wo``; ragged last groups) give the
    scalar engine's sums exactly, also with the error rows streamed in."""
    g = ConvGeometry(*case[:8])
    _gradients_match(case, streamed=lanes == 3, lanes=min(lanes, g.wo))


@settings(max_examples=10, deadline=None)
@given(cin=st.integers(1, 3), cout=st.integers(1, 5), h=st.integers(2, 7),
       w=st.integers(2, 9), kh=st.integers(1, 3), kw=st.integers(1, 3),
       pad=st.booleans(), data=st.data())
def test_laned_gradients_random_shapes(cin, cout, h, w, kh, kw, pad, data):
    kh, kw = min(kh, h), min(kw, w)
    ph, pw = (kh // 2, kw // 2) if pad else (0, 0)
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    rows = data.draw(st.integers(1, cout + 1), label="rows")
    lanes = data.draw(st.integers(1, g.wo), label="lanes")
    _gradients_match((cin, cout, h, w, kh, kw, ph, pw, rows), streamed=data.draw(
        st.booleans(), label="streamed"), lanes=lanes)


def test_lanes_out_of_range():
    g = ConvGeometry(cin=1, cout=2, h=4, w=4, kh=3, kw=3, ph=1, pw=1)
    for lanes in (0, 5, 1.5):
        with pytest.raises(ValueError, match="lanes"):
            WeightGradientEngine(geometry=g, rows=2, act_fmt=N.act, error_fmt=N.error,
                                 lanes=lanes)


@pytest.mark.parametrize("seed", range(3))
def test_random_shapes_gradients(seed):
    from tests.rtl.test_conv import random_geometry
    rng = np.random.default_rng(200 + seed)
    geometry = random_geometry(rng)
    rows = int(rng.integers(1, geometry["cout"] + 2))
    g = ConvGeometry(**geometry)
    case = (g.cin, g.cout, g.h, g.w, g.kh, g.kw, g.ph, g.pw, rows)
    test_gradients_match_reference(case, streamed=bool(seed % 2))


from hypothesis import given, settings, strategies as st
from fpdeep.rtl.weight_update import MasterStore


@settings(max_examples=8, deadline=None)
@given(cin=st.integers(1, 2), cout=st.integers(1, 3), kh=st.integers(1, 2),
       kw=st.integers(1, 3), momentum=st.booleans(), seed=st.integers(0, 2**16))
def test_master_store_steps_every_weight_as_the_reference(cin, cout, kh, kw, momentum, seed):
    """The one SGD write-back: each weight offered (at random gaps) steps its master and
    velocity exactly as ``sgd_step_np``, its copy leaves 4 cycles later, and the host
    reads the new masters."""
    rng = np.random.default_rng(seed)
    gaps = random.Random(seed)
    g = ConvGeometry(cin=cin, cout=cout, h=kh, w=kw, kh=kh, kw=kw)
    w = N.master.from_float(rng.normal(0, 0.5, size=(cout, cin, kh, kw)))
    b = N.master.from_float(rng.normal(0, 0.5, size=cout))
    gw = rng.integers(-2**40, 2**40, size=w.shape)
    gb = rng.integers(-2**40, 2**40, size=b.shape)
    rate_q, momentum_q = N.rate_from_float(0.1), (N.rate_from_float(0.9) if momentum else 0)
    store = MasterStore(geometry=g, numerics=N, masters=(w, b), rate_q=rate_q,
                        momentum_q=momentum_q)
    velocity_w, velocity_b = N.master.from_float(rng.normal(0, 0.01, size=w.shape)), \
        N.master.from_float(rng.normal(0, 0.01, size=b.shape))
    if not momentum:
        velocity_w, velocity_b = np.zeros_like(w), np.zeros_like(b)
    ref_w, _, sat_w = sgd_step_np(w, velocity_w, gw, N, rate_q, momentum_q)
    ref_b, _, sat_b = sgd_step_np(b, velocity_b, gb, N, rate_q, momentum_q)
    copy_w, copy_sat_w = master_to_weight_np(ref_w, N)
    copy_b, copy_sat_b = master_to_weight_np(ref_b, N)
    weights = []                                  # (position, grad, copy) in walk order
    for o in range(cout):
        for i in range(cin + 1):
            for ky in range(kh if i < cin else 1):
                word = o * (cin * kh + 1) + (i * kh + ky if i < cin else cin * kh)
                for kx in range(kw if i < cin else 1):
                    bias = i == cin
                    position = dict(word=word, kx=kx, o=o, i=i, ky=ky, bias=int(bias))
                    weights.append((position,
                                    int(gb[o] if bias else gw[o, i, ky, kx]),
                                    int(copy_b[o] if bias else copy_w[o, i, ky, kx])))
    copies = []

    async def tb(ctx):
        if momentum:                              # a velocity to decay, as after a batch
            for o in range(cout):
                base = o * (cin * kh + 1)
                for j in range(cin * kh):
                    ctx.set(store.velocity.data[base + j],
                            [int(v) for v in velocity_w[o, j // kh, j % kh]])
                ctx.set(store.velocity.data[base + cin * kh], [int(velocity_b[o])] +
                        [0] * (kw - 1))
        ctx.set(store.walking, 1)
        ctx.set(store.owner_busy, 1)
        for position, grad, _ in weights:
            ctx.set(store.read_word, position["word"])
            await ctx.tick()                      # the word's read
            while gaps.random() < 0.3:
                await ctx.tick()
            ctx.set(store.i.payload, {"grad": grad, "refresh": 0, "tag": position})
            ctx.set(store.i.valid, 1)
            await ctx.tick()
            ctx.set(store.i.valid, 0)
        for _ in range(6):
            await ctx.tick()
        ctx.set(store.walking, 0)
        ctx.set(store.owner_busy, 0)
        for o in range(cout):
            for j in range(cin * kh + 1):
                for k in range(kw if j < cin * kh else 1):
                    ctx.set(store.host_addr, ((o * (cin * kh + 1) + j) << store.kx_bits) | k)
                    ctx.set(store.host_read, 1)
                    await ctx.tick()
                    ctx.set(store.host_read, 0)
                    assert ctx.get(store.host_rvalid)
                    want = ref_b[o] if j == cin * kh else ref_w[o, j // kh, j % kh, k]
                    assert ctx.get(store.host_rdata) == want, (o, j, k)
        assert ctx.get(store.saturations) == sat_w + sat_b + copy_sat_w + copy_sat_b

    async def watch(ctx):
        offered, left, cycle = [], [], 0
        async for _clk, _rst, valid, o_valid, tag, weight in ctx.tick().sample(
                store.i.valid, store.o.valid, store.o.payload.tag, store.o.payload.weight):
            if valid:
                offered.append(cycle)
            if o_valid:
                copies.append((tag.word, tag.kx, weight))
                left.append(cycle)
                assert left == [c + 4 for c in offered[:len(left)]], "4 cycles of latency"
            cycle += 1

    sim = Simulator(store)
    sim.add_clock(1e-6)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(tb)
    sim.run()
    assert copies == [(p["word"], p["kx"], c) for p, _, c in weights]
