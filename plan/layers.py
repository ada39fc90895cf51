"""Weighted layers as the gateware builds them: pure Python, shared by the
planner's gateware model (:mod:`.model`) and the chips (:mod:`fpdeep.rtl`)."""

from dataclasses import dataclass, replace

from .errors import FpdeepError
from .network import Conv2d, Linear, MaxPool2d, ReLU, SoftmaxCrossEntropy

__all__ = ["ConvGeometry", "GatewareLayer", "gateware_layers"]


@dataclass(frozen=True)
class ConvGeometry:
    """A stride-1 zero-padded convolution ``(cin, h, w) -> (cout, h + 2ph - kh + 1, ...)``.

    A fully-connected layer is the convolution whose kernel covers its whole input.
    """
    cin: int
    cout: int
    h: int
    w: int
    kh: int
    kw: int
    ph: int = 0
    pw: int = 0

    def __post_init__(self):
        for name in ("cin", "cout", "h", "w", "kh", "kw"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, not {getattr(self, name)!r}")
        if not 0 <= self.ph < self.kh or not 0 <= self.pw < self.kw:
            raise ValueError(f"padding ({self.ph}, {self.pw}) must be smaller than the kernel "
                             f"({self.kh}, {self.kw})")
        if self.ho < 1 or self.wo < 1:
            raise ValueError(f"a {self.kh}x{self.kw} kernel does not fit a {self.h}x{self.w} map")

    @property
    def ho(self):
        return self.h + 2 * self.ph - self.kh + 1

    @property
    def wo(self):
        return self.w + 2 * self.pw - self.kw + 1

    @property
    def is_matvec(self):
        """The kernel covers the unpadded input (an FC layer): one output pixel, so BP is
        a matrix-vector product (:class:`~fpdeep.rtl.fc.FcBackpropEngine`) and WU an
        outer product, not convolutions."""
        return self.kh == self.h and self.kw == self.w and self.ph == 0 and self.pw == 0

    @property
    def macs(self):
        return self.cout * self.cin * self.kh * self.kw * self.ho * self.wo

    @property
    def weights(self):
        return self.cout * (self.cin * self.kh * self.kw + 1)

    def transposed(self):
        """The convolution that back-propagates errors: ``(cout, ho, wo) -> (cin, h, w)``."""
        return ConvGeometry(cin=self.cout, cout=self.cin, h=self.ho, w=self.wo, kh=self.kh,
                        kw=self.kw, ph=self.kh - 1 - self.ph, pw=self.kw - 1 - self.pw)

    def channels(self, lo, hi):
        """The slice of output channels ``[lo, hi)``."""
        return replace(self, cout=hi - lo)


@dataclass(frozen=True)
class GatewareLayer:
    """A weighted layer (``index`` among them) with the post-ops the gateware runs after it."""
    name: str
    index: int
    geometry: ConvGeometry
    relu: bool
    pool: bool
    linear: bool = False

    @property
    def kind(self):
        return "linear" if self.linear else "conv"

    @property
    def out_shape(self):
        """The map after the post-ops: what the next layer reads."""
        g = self.geometry
        return (g.cout, g.ho // 2, g.wo // 2) if self.pool else (g.cout, g.ho, g.wo)

    @property
    def post_ops(self):
        return tuple(op for op, on in (("relu", self.relu), ("pool", self.pool)) if on)


def gateware_layers(network):
    """The weighted layers of ``network`` as the gateware builds them, each with the
    post-ops that follow it (the planner's model and the chips both read these).

    Raises
    ------
    FpdeepError
        Naming a layer the gateware cannot build.
    """
    bad = network.gateware_unsupported()
    if bad:
        raise FpdeepError(f"network {network.name!r}: the gateware cannot build "
                          f"{', '.join(map(repr, bad))} (stride > 1 or a pool other than "
                          f"2x2/2)")
    layers = network.layers
    specs = []
    index = 0
    while index < len(layers):
        layer = layers[index]
        if isinstance(layer, SoftmaxCrossEntropy):
            break
        if not isinstance(layer, (Conv2d, Linear)):
            raise FpdeepError(f"network {network.name!r}: layer {layer.name!r} "
                              f"({type(layer).__name__}) must follow a Conv2d or Linear "
                              f"layer for the gateware")
        cin, h, w = network.input_shape_of(index)
        if isinstance(layer, Conv2d):
            (kh, kw), (ph, pw) = layer.kernel_hw, layer.padding_hw
            g = ConvGeometry(cin, layer.out_channels, h, w, kh, kw, ph, pw)
        else:
            g = ConvGeometry(cin, layer.out_features, h, w, h, w)
        index += 1
        relu = pool = False
        if index < len(layers) and isinstance(layers[index], ReLU):
            relu, index = True, index + 1
        if index < len(layers) and isinstance(layers[index], MaxPool2d):
            pool, index = True, index + 1
        if index < len(layers) and isinstance(layers[index], (ReLU, MaxPool2d)):
            raise FpdeepError(f"network {network.name!r}: layer {layers[index].name!r} "
                              f"cannot follow the post-ops of {layer.name!r} for the "
                              f"gateware (ReLU then max-pool is the supported order)")
        specs.append(GatewareLayer(layer.name, len(specs), g, relu, pool,
                                   linear=isinstance(layer, Linear)))
    if specs[-1].relu or specs[-1].pool:
        raise FpdeepError(f"network {network.name!r}: the last weighted layer "
                          f"{specs[-1].name!r} feeds the loss and cannot have post-ops "
                          f"on the gateware")
    return specs
