"""The model of the machine the gateware builds: its timing, to the cycle where it can be.

What the gateware builds
------------------------
* A chip holds either a contiguous run of whole weighted layers, or one slice of
  one layer split by **output channels** (contiguous ranges on consecutive chips;
  such a chip holds nothing else).
* Engines: FP is ``rows × Wo`` (``rows`` output channels at once), WU is
  ``rows × kw`` PEs of ``lanes`` multipliers each (``lanes`` output pixels of a row
  per step, :attr:`SliceSpec.wu_lanes`, so ``rows × kw × lanes`` PEs), BP is the FP engine on :meth:`ConvGeometry.transposed`, ``rows × W``
  of the layer input (``rows`` input channels at once). The network's first layer
  has no BP. One multiplier per PE, plus the multipliers outside the engines
  (:class:`GatewareTiming`, ``reserved_multipliers_*``).
* Every layer must be gateware-supported (:meth:`Network.gateware_unsupported`), a
  Conv2d or Linear optionally followed by ReLU and then a 2×2 max-pool.

The chip schedule (``rtl/core.py``)
-----------------------------------
Per sample, a *forward* sequencer: LOAD takes the label word, then FP_START starts
every local layer's FP engine, the sender of the output map and, on a slice chip
after the first of its layer, the receiver of the slices in front, all at once.
Maps travel and are produced row by row (row ``y`` of every channel, then row
``y + 1``): an engine step waits until its input row is in (1 word per cycle from
the host or the link, or the layer in front's output row), and the sender sends
each output row as soon as it is written, one word per cycle. FP_WAIT ends when
all of them are idle. A chip with a slice of a split layer that has more of the
layer behind it loads its whole input first and sends it on (with the label) as
its FP starts, then the channels up to its own (no label).

A *loss* stage on the last chip (with a split last layer, the last slice's chip
takes the loss over all logits): once a sample is forwarded and the loss's error
buffer is free, the loss fills the buffer, overlapping BP and WU of the sample
before; if the backward path is idle as the loss starts (it waits for that very
sample), the loss writes the last layer's error store directly (LOSS_WAIT), as it
always does on a slice of a split last layer. A *backward* sequencer: every local
layer's BP and WU engine at once (on the last chip with the buffer's replay into
the store, which frees the buffer as it ends), each taking the rows of its error
map as they are stored: from the replay or the loss, from the BP
behind it on the chip, or, on a chip that does not end the chain, framed from
the link as they come (``w`` words a row and a header of one or two,
:func:`row_header_words`; partial-sum rows of a split layer's BP are ``3w + 2``). BACK_WAIT ends when every BP is done and the whole error map
is in, then wait for every WU engine. Per mini-batch of B samples, an SGD walk over every local weight;
for a layer whose masters and velocities the next chip holds (``Cluster(held=...)``)
an exchange instead, which the owner waits for: its saturated gradient sums go down
the link's WGT channel (1 + 2 words per weight), the holder steps SGD on them as
they arrive and sends each new 16-bit copy back up (1 word per weight).

Forward of sample ``s + 1`` overlaps backward of ``s``: a chip's feature memories
hold its own number of samples, its *slots* (``Cluster(slots=[...])``), and its
forward waits while ``slots`` samples are forwarded but not yet backed. The first
forward of batch ``b + 1`` waits for batch ``b``'s SGD step, so more than ``B``
slots never help.

The model
---------
:func:`fp_run`, :func:`bp_run`, :func:`wu_run` give an engine's exact busy cycles
from the tile-by-tile behaviour of :class:`~fpdeep.rtl.systolic.SystolicArray`
(:func:`array_run`), an FP engine's steps waiting for their input rows included
(:func:`fp_run` with ``enter``); :func:`loss_cycles`, :func:`replay_cycles` and
:func:`sgd_cycles` those of the loss, its buffer's replay and the SGD walk.
:class:`LinkDirection` follows words through one direction of
a link (packer, credits, replay slots, framer, receiver); :func:`exchange_step`
follows a held layer's exchange through both directions at once, cycle for cycle.
:func:`simulate` runs the
chain's two sequencers per chip, sample by sample, over a few mini-batches and
returns the steady-state figures. Every timing constant is in
:class:`GatewareTiming`, with the RTL behaviour it mirrors, so that a measurement
can correct it in one place.

Known approximations, except in the exchange: CTRL frames (ACK and credit updates
sent while a direction has no data) are not modelled as taking the wire (a
:class:`LinkPair` carrying traffic both ways delivered as fast as with one way: the
updates ride in the data frames' headers), nor are periodic refresh frames; credit
and ACK returns are fixed delays;
an engine stalled by a full serializer is not slowed further than the link it feeds;
a slice chip receives the partial sums of the chips after it before its own BP.
"""

from .timing import *
from .engines import *
from .links import *
from .chips import *
from .chain import *
from . import timing, engines, links, chips, chain

__all__ = timing.__all__ + engines.__all__ + links.__all__ + chips.__all__ + chain.__all__
