"""Formal proof: credit flow control never lets a receive buffer overflow.

The harness puts a :class:`CreditCounter` (the design under proof) in front of an
abstract receiver: a buffer of ``depth`` words with a pop counter reported back as
credit. Everything else is arbitrary (``AnySeq``): when the sender has a word, when a
word in flight lands, when the consumer pops, and when, if ever, a credit report is
snapshotted and delivered, so reports may be delayed, lost or repeated at will.
k-induction then proves that a landing word always finds room, for all time.
"""

import time

import pytest
from amaranth import *
from amaranth.asserts import AnySeq, Initial
from amaranth.hdl import Assert, Assume

from fpdeep.rtl.link.channels import CreditCounter
from tests.formal_tools import check_formal


class CreditSpec(Elaboratable):
    def __init__(self, depth, width, *, honour_credits=True):
        self.depth, self.width = depth, width
        self.honour_credits = honour_credits

    def elaborate(self, platform):
        m = Module()
        D, M = self.depth, 1 << self.width
        m.submodules.cc = cc = CreditCounter(depth=D, width=self.width)
        in_flight = Signal(range(2 * D + 1))   # sent, not yet in the buffer
        level = Signal(range(2 * D + 1))       # in the buffer, not yet popped
        popped = Signal(self.width)            # the receiver's freed counter
        snap = Signal(self.width)              # a report on its way back

        want_send, land, pop, take_snap, report = (AnySeq(1) for _ in range(5))
        send = want_send & (cc.available if self.honour_credits else 1)
        lands = land & (in_flight != 0)
        pops = pop & (level != 0)
        m.d.comb += [
            cc.consume.eq(send),
            cc.update.eq(report),
            cc.freed.eq(snap),
        ]
        m.d.sync += [
            in_flight.eq(in_flight + send - lands),
            level.eq(level + lands - pops),
        ]
        with m.If(pops):
            m.d.sync += popped.eq(popped + 1)
        with m.If(take_snap):
            m.d.sync += snap.eq(popped)

        def mod(x):
            return x[:self.width]

        with m.If(~Initial()):
            # The property: a word that lands always fits.
            m.d.comb += Assert(~(lands & (level == D)))
            m.d.comb += Assert(in_flight + level <= D)
            # Invariants that make it inductive: exact word accounting, and the report
            # chain returned <= snap <= popped <= sent (in modular order).
            m.d.comb += [
                Assert(mod(cc.sent - popped) == in_flight + level),
                Assert(mod(cc.sent - cc.returned) <= D),
                Assert(mod(cc.sent - snap) <= mod(cc.sent - cc.returned)),
                Assert(mod(cc.sent - popped) <= mod(cc.sent - snap)),
            ]
        return m


def test_credits_never_overflow_the_receiver():
    start = time.perf_counter()
    check_formal(CreditSpec(depth=6, width=3), name="credit_no_overflow", mode="prove", depth=8)
    print(f"formal credit proof: {time.perf_counter() - start:.1f} s")


def test_the_check_can_fail():
    # A sender that ignores its credits overflows the buffer, and the flow says so.
    with pytest.raises(AssertionError, match="FAIL"):
        check_formal(CreditSpec(depth=6, width=3, honour_credits=False),
                     name="credit_ignored", mode="prove", depth=8)
