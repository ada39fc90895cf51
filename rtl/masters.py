"""Initial master weights: He-uniform, zero biases, quantized to the master format."""

import numpy as np

from ..plan.network import layer_geometry, weighted_layers
from .numerics import DEFAULT_NUMERICS

__all__ = ["init_masters"]


def init_masters(network, numerics=DEFAULT_NUMERICS, seed=0):
    """He-uniform initial weights (zero biases), quantized to the master format.

    Returns ``{layer_name: (W, b)}`` of int64 masters, W shaped ``(Cout, Cin, kh, kw)``.
    """
    rng = np.random.default_rng(seed)
    masters = {}
    for index in weighted_layers(network):
        cout, cin, kh, kw, _, _ = layer_geometry(network, index)
        bound = np.sqrt(6.0 / (cin * kh * kw))
        w = rng.uniform(-bound, bound, size=(cout, cin, kh, kw))
        masters[network.layers[index].name] = (numerics.master.from_float(w),
                                               np.zeros(cout, dtype=np.int64))
    return masters
