import pytest
from amaranth import Shape
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from fpdeep.rtl.conv import RowLayout
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.rtl.slots import FeatureMapSignature, FeatureMemory, FeaturePort, SlotSignature


@settings(max_examples=10, deadline=None)
@given(slots=st.integers(1, 3), channels=st.integers(1, 3), h=st.integers(1, 3),
       w=st.integers(1, 3), front=st.integers(0, 2), data=st.data())
def test_each_side_reaches_its_own_slot(slots, channels, h, w, front, data):
    """A forward write port and a backward read port of a map whose channels start at
    ``front``: what copy ``s`` received through the first, the second reads in copy
    ``s``, at the same addresses, and nothing leaks into another copy or below ``base``."""
    whole = RowLayout(front + channels, h, w, N.act)
    own = RowLayout(channels, h, w, N.act)
    base = front * h
    fm = FeatureMemory(layout=whole, slots=slots, ports={
        "wr": FeaturePort(write=True, side="forward", layout=own, base=base),
        "rd": FeaturePort(write=False, side="backward", layout=own, base=base),
        "all": FeaturePort(write=False, side="backward", layout=whole),
    })
    order = data.draw(st.permutations(range(slots)))

    def word(s, a):
        return [(s * 100 + a * 10 + x) % 2000 for x in range(w)]

    async def tb(ctx):
        for s in order:
            ctx.set(fm.slot.forward, s)
            for a in range(own.depth):
                ctx.set(fm.wr.addr, a)
                ctx.set(fm.wr.data, word(s, a))
                ctx.set(fm.wr.en, 1)
                await ctx.tick()
            ctx.set(fm.wr.en, 0)
        for s in range(slots):
            ctx.set(fm.slot.backward, s)
            for a in range(own.depth):
                ctx.set(fm.rd.addr, a)
                await ctx.tick()
                assert list(ctx.get(fm.rd.data)) == word(s, a), (s, a)
            for a in range(base):            # the channels in front: never written
                ctx.set(fm.all.addr, a)
                await ctx.tick()
                assert list(ctx.get(fm.all.data)) == [0] * w, (s, a)

    sim = Simulator(fm)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_map_signature_members():
    layout = RowLayout(3, 4, 5, N.act)
    sig = FeatureMapSignature(layout)
    assert set(sig.members) == {"forward", "backward", "rows_ready"}
    assert sig.members["rows_ready"].init == 4      # every row, when nothing is filling
    assert Shape.cast(sig.members["forward"].signature.members["addr"].shape).width == 4


def test_refuses_bad_parameters():
    layout = RowLayout(2, 2, 2, N.act)
    with pytest.raises(ValueError, match="slots"):
        SlotSignature(0)
    with pytest.raises(TypeError, match="layout"):
        FeatureMemory(layout=(2, 2, 2), slots=1, ports={})
    with pytest.raises(TypeError, match="port 'p'"):
        FeatureMemory(layout=layout, slots=1, ports={"p": "read"})
    with pytest.raises(ValueError, match="side"):
        FeatureMemory(layout=layout, slots=1,
                      ports={"p": FeaturePort(write=False, side="sideways", layout=layout)})
    with pytest.raises(ValueError, match="does not fit"):
        FeatureMemory(layout=layout, slots=1,
                      ports={"p": FeaturePort(write=False, side="forward", layout=layout,
                                              base=1)})
