"""Per-layer training workload: MACs of FP, BP and WU, weights, activations, errors.

Only conv and linear layers carry work. ReLU, max-pool and the loss are
post-ops of the preceding conv or linear layer: they run in that layer's FP
engine (and their derivatives in its BP path) and add no MACs. A linear layer is
modelled as a conv whose kernel covers its whole (C, H, W) input map, giving a
1×1 output map with ``out_features`` channels.

For a layer with ``Cout`` outputs, ``Cin`` inputs, a ``kh×kw`` kernel and an
``Ho×Wo`` output map:

* FP MACs = Cout·Cin·kh·kw·Ho·Wo (linear: out·in);
* BP MACs = the same, except 0 for the first layer (no error to the input);
* WU MACs = the same.

Sizes are in elements (multiply by 16 bits for the wire or memory).
"""

from dataclasses import dataclass

from .errors import FpdeepError
from .network import Conv2d, Linear

__all__ = ["LayerWork", "workload", "totals"]


@dataclass(frozen=True)
class LayerWork:
    """The work of one conv or linear layer with its post-ops.

    Attributes
    ----------
    name, kind : str
        Layer name; ``"conv"`` or ``"linear"``.
    index : int
        Position among the compute layers (0 = first).
    post_ops : tuple of str
        Names of the ReLU / max-pool / loss layers attached to it.
    in_shape : (Cin, H, W)
        Input map (what the layer reads).
    out_shape : (Cout, Ho, Wo)
        Output map of the MACs, before the post-ops.
    post_shape : (C, H, W)
        Output after the post-ops: what goes to the next layer.
    kernel : (kh, kw)
    stride, padding : int, (ph, pw)
    fp_macs, bp_macs, wu_macs : int
        Per sample.
    weights : int
        Including biases.
    """
    name: str
    kind: str
    index: int
    post_ops: tuple
    in_shape: tuple
    out_shape: tuple
    post_shape: tuple
    kernel: tuple
    stride: int
    padding: tuple
    fp_macs: int
    bp_macs: int
    wu_macs: int
    weights: int

    @property
    def out_channels(self):
        return self.out_shape[0]

    @property
    def in_channels(self):
        return self.in_shape[0]

    @property
    def out_rows(self):
        return self.out_shape[1]

    @property
    def out_cols(self):
        return self.out_shape[2]

    @property
    def macs(self):
        """FP + BP + WU MACs per sample."""
        return self.fp_macs + self.bp_macs + self.wu_macs

    @property
    def macs_per_output(self):
        """FP MACs of one output element: Cin·kh·kw."""
        return self.in_shape[0] * self.kernel[0] * self.kernel[1]

    @property
    def activations_in(self):
        """Elements of the input map."""
        c, h, w = self.in_shape
        return c * h * w

    @property
    def activations_out(self):
        """Elements sent to the next layer (after post-ops)."""
        c, h, w = self.post_shape
        return c * h * w

    @property
    def errors_in(self):
        """Error elements arriving from the next layer (same size as activations_out)."""
        return self.activations_out

    @property
    def errors_out(self):
        """Error elements sent back to the previous layer (0 for the first layer)."""
        return 0 if self.index == 0 else self.activations_in


def workload(network):
    """The :class:`LayerWork` of every conv and linear layer of ``network``, in order.

    Raises
    ------
    FpdeepError
        If a ReLU or max-pool comes before any conv or linear layer.
    """
    works, pending = [], None
    for position, layer in enumerate(network.layers):
        in_shape = network.input_shape_of(position)
        out_shape = network.output_shape_of(position)
        if isinstance(layer, (Conv2d, Linear)):
            if pending is not None:
                works.append(pending)
            first = not works
            if isinstance(layer, Conv2d):
                kind, kernel = "conv", layer.kernel_hw
                stride, padding = layer.stride, layer.padding_hw
            else:
                kind, kernel = "linear", in_shape[1:]
                stride, padding = 1, (0, 0)
            cout, ho, wo = out_shape
            fp = cout * in_shape[0] * kernel[0] * kernel[1] * ho * wo
            pending = dict(name=layer.name, kind=kind, index=len(works), post_ops=(),
                           in_shape=in_shape, out_shape=out_shape, post_shape=out_shape,
                           kernel=tuple(kernel), stride=stride, padding=tuple(padding),
                           fp_macs=fp, bp_macs=0 if first else fp, wu_macs=fp,
                           weights=layer.weight_count)
        else:
            if pending is None:
                raise FpdeepError(f"network {network.name!r}: layer {layer.name!r} comes before "
                                  f"any conv or linear layer it could be attached to")
            pending["post_ops"] += (layer.name,)
            pending["post_shape"] = out_shape
    if pending is None:
        raise FpdeepError(f"network {network.name!r}: has no conv or linear layer")
    works.append(pending)
    return [LayerWork(**work) if isinstance(work, dict) else work for work in works]


def totals(works):
    """Network totals per sample: a dict of MACs and weights."""
    return {
        "fp_macs": sum(w.fp_macs for w in works),
        "bp_macs": sum(w.bp_macs for w in works),
        "wu_macs": sum(w.wu_macs for w in works),
        "macs": sum(w.macs for w in works),
        "weights": sum(w.weights for w in works),
    }
