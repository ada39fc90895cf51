"""Networks as explicit, ordered layer lists with inferred and checked shapes.

A network is ``Network(name, input_shape=(C, H, W), layers=[...])``. The layers
are the ones the hardware implements:

* ``Conv2d``: k×k (or kh×kw) kernel, stride 1, zero padding, with bias;
* ``ReLU``;
* ``MaxPool2d``: 2×2, stride 2;
* ``Linear``: fully connected over the flattened (C, H, W) input, with bias;
* ``SoftmaxCrossEntropy``: the loss, always last.

Anything else is refused by name. Shapes are inferred front to back and every
impossible shape raises :class:`FpdeepError` naming the layer.

Two extensions exist for *planning* the paper's benchmarks only: a conv
``stride`` (AlexNet's 11×11/4 first layer) and a 3×3/2 max-pool (AlexNet's
overlapping pools). The gateware implements stride 1 and 2×2 pools;
:meth:`Network.gateware_unsupported` lists the layers it cannot build. These
fields are left out of :meth:`Network.to_dict` when they have their defaults.

Networks are read from and written to JSON or YAML with :func:`load_network`
and :func:`save_network`.
"""

import json
import os
from dataclasses import dataclass, field, asdict

from .errors import FpdeepError
from .files import atomic_write_text, check_nesting, read_text

__all__ = ["Conv2d", "ReLU", "MaxPool2d", "Linear", "SoftmaxCrossEntropy",
           "Network", "LAYER_TYPES", "digits_cnn", "load_network", "save_network",
           "weighted_layers", "layer_geometry"]


@dataclass(frozen=True)
class Conv2d:
    name: str
    in_channels: int
    out_channels: int
    kernel: int | tuple = 3
    padding: int | tuple = 0
    stride: int = 1

    @property
    def kernel_hw(self):
        return _pair(self.kernel)

    @property
    def padding_hw(self):
        return _pair(self.padding)

    def output_shape(self, shape):
        c, h, w = shape
        kh, kw = self.kernel_hw
        ph, pw = self.padding_hw
        if c != self.in_channels:
            raise FpdeepError(f"layer {self.name!r}: expects {self.in_channels} input channels, "
                              f"gets {c}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise FpdeepError(f"layer {self.name!r}: stride must be a positive int, "
                              f"not {self.stride!r}")
        ho = (h + 2 * ph - kh) // self.stride + 1
        wo = (w + 2 * pw - kw) // self.stride + 1
        if ho < 1 or wo < 1:
            raise FpdeepError(f"layer {self.name!r}: {kh}x{kw} kernel with padding {ph},{pw} "
                              f"does not fit a {h}x{w} input")
        if ph >= kh or pw >= kw:
            raise FpdeepError(f"layer {self.name!r}: padding {ph},{pw} must be smaller than the "
                              f"{kh}x{kw} kernel")
        return (self.out_channels, ho, wo)

    @property
    def weight_count(self):
        kh, kw = self.kernel_hw
        return self.out_channels * self.in_channels * kh * kw + self.out_channels


@dataclass(frozen=True)
class ReLU:
    name: str

    def output_shape(self, shape):
        return shape

    weight_count = 0


@dataclass(frozen=True)
class MaxPool2d:
    """2×2/2 max-pool (gateware), or 3×3/2 (planning AlexNet only)."""
    name: str
    size: int = 2
    stride: int | None = None

    def output_shape(self, shape):
        c, h, w = shape
        stride = self.size if self.stride is None else self.stride
        if (self.size, stride) == (2, 2):
            if h % 2 or w % 2:
                raise FpdeepError(f"layer {self.name!r}: 2x2 max-pool needs an even input, "
                                  f"gets {h}x{w}")
            return (c, h // 2, w // 2)
        if (self.size, stride) == (3, 2):
            if h < 3 or w < 3:
                raise FpdeepError(f"layer {self.name!r}: 3x3 max-pool needs at least 3x3, "
                                  f"gets {h}x{w}")
            return (c, (h - 3) // 2 + 1, (w - 3) // 2 + 1)
        raise FpdeepError(f"layer {self.name!r}: only 2x2/2 (and 3x3/2 for planning) "
                          f"max-pooling is supported, not {self.size}x{self.size}/{stride}")

    weight_count = 0


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int

    def output_shape(self, shape):
        c, h, w = shape
        if c * h * w != self.in_features:
            raise FpdeepError(f"layer {self.name!r}: expects {self.in_features} inputs, gets "
                              f"{c}x{h}x{w} = {c * h * w}")
        return (self.out_features, 1, 1)

    @property
    def weight_count(self):
        return self.out_features * self.in_features + self.out_features


@dataclass(frozen=True)
class SoftmaxCrossEntropy:
    name: str = "loss"

    def output_shape(self, shape):
        c, h, w = shape
        if h != 1 or w != 1:
            raise FpdeepError(f"layer {self.name!r}: the loss needs a vector of class scores, "
                              f"gets a {c}x{h}x{w} map")
        return shape

    weight_count = 0


LAYER_TYPES = {cls.__name__: cls for cls in (Conv2d, ReLU, MaxPool2d, Linear,
                                            SoftmaxCrossEntropy)}


def _pair(value):
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int)
                                                                  for v in value):
        return tuple(value)
    raise FpdeepError(f"expected an int or a pair of ints, not {value!r}")


@dataclass
class Network:
    """An ordered list of layers applied to an input of shape ``(C, H, W)``.

    Raises
    ------
    FpdeepError
        If a layer is of an unsupported type, names repeat, a shape is impossible,
        or the loss is missing or not last.
    """
    name: str
    input_shape: tuple
    layers: list
    shapes: list = field(init=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise FpdeepError(f"network name must be a non-empty string, not {self.name!r}")
        if not isinstance(self.input_shape, (tuple, list)):
            raise FpdeepError(f"network {self.name!r}: input shape must be three positive "
                              f"ints (C, H, W), not {self.input_shape!r}")
        self.input_shape = tuple(self.input_shape)
        if len(self.input_shape) != 3 or not all(_is_size(d) for d in self.input_shape):
            raise FpdeepError(f"network {self.name!r}: input shape must be three positive ints "
                              f"(C, H, W), not {self.input_shape!r}")
        if not self.layers:
            raise FpdeepError(f"network {self.name!r}: has no layers")
        names = set()
        shape = self.input_shape
        self.shapes = [shape]
        for index, layer in enumerate(self.layers):
            if type(layer) not in LAYER_TYPES.values():
                raise FpdeepError(f"network {self.name!r}: layer {index} of type "
                                  f"{type(layer).__name__!r} is not supported")
            _check_fields(layer, f"network {self.name!r}: layer {index}")
            if layer.name in names:
                raise FpdeepError(f"network {self.name!r}: layer name {layer.name!r} is used twice")
            names.add(layer.name)
            if isinstance(layer, SoftmaxCrossEntropy) and index != len(self.layers) - 1:
                raise FpdeepError(f"network {self.name!r}: loss {layer.name!r} must be the last "
                                  f"layer")
            shape = layer.output_shape(shape)
            self.shapes.append(shape)
        if not isinstance(self.layers[-1], SoftmaxCrossEntropy):
            raise FpdeepError(f"network {self.name!r}: the last layer must be "
                              f"SoftmaxCrossEntropy")

    @property
    def num_classes(self):
        return self.shapes[-1][0]

    def input_shape_of(self, index):
        return self.shapes[index]

    def output_shape_of(self, index):
        return self.shapes[index + 1]

    def gateware_unsupported(self):
        """Names of layers that only the planner models (stride > 1, 3×3 pools)."""
        return [layer.name for layer in self.layers
                if (isinstance(layer, Conv2d) and layer.stride != 1)
                or (isinstance(layer, MaxPool2d) and (layer.size != 2 or
                                                      layer.stride not in (None, 2)))]

    def to_dict(self):
        layers = []
        for layer in self.layers:
            spec = {"type": type(layer).__name__, **asdict(layer)}
            for key, default in _OPTIONAL_DEFAULTS.get(type(layer), {}).items():
                if spec.get(key) == default:
                    del spec[key]
            layers.append(spec)
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "layers": layers,
        }

    @classmethod
    def from_dict(cls, spec, *, source="network"):
        try:
            name, input_shape, layer_specs = spec["name"], spec["input_shape"], spec["layers"]
        except (KeyError, TypeError) as error:
            raise FpdeepError(f"{source}: missing field {error}") from None
        if not isinstance(layer_specs, list) or not isinstance(input_shape, (list, tuple)):
            raise FpdeepError(f"{source}: 'layers' must be a list and 'input_shape' a list")
        layers = []
        for index, layer_spec in enumerate(layer_specs):
            if not isinstance(layer_spec, dict):
                raise FpdeepError(f"{source}: layer {index} is not a mapping")
            layer_spec = dict(layer_spec)
            kind = layer_spec.pop("type", None)
            if not isinstance(kind, str) or kind not in LAYER_TYPES:
                raise FpdeepError(f"{source}: layer {index} has unsupported type {kind!r}")
            try:
                layers.append(LAYER_TYPES[kind](**layer_spec))
            except TypeError as error:
                raise FpdeepError(f"{source}: layer {index} ({kind}): {error}") from None
        try:
            return cls(name, tuple(input_shape), layers)
        except FpdeepError as error:
            if source == "network":
                raise
            raise FpdeepError(f"{source}: {error}") from None


_OPTIONAL_DEFAULTS = {Conv2d: {"stride": 1}, MaxPool2d: {"stride": None}}

#: The largest channel count, map size or kernel a network may give: far beyond any
#: network here (VGG's 25,088 FC inputs), and small enough that planning never
#: meets numbers it cannot handle in time.
MAX_SIZE = 1 << 24

#: Per layer type, its integer fields: ``"size"`` (1 to MAX_SIZE), ``"pad"`` (0 up),
#: ``"pair"`` (a size or a pair of sizes), ``"padpair"``, ``"optional"`` (None or a size).
_FIELDS = {Conv2d: {"in_channels": "size", "out_channels": "size", "kernel": "pair",
                    "padding": "padpair", "stride": "size"},
           Linear: {"in_features": "size", "out_features": "size"},
           MaxPool2d: {"size": "size", "stride": "optional"},
           ReLU: {}, SoftmaxCrossEntropy: {}}


def _is_size(value, low=1):
    return (isinstance(value, int) and not isinstance(value, bool)
            and low <= value <= MAX_SIZE)


def _check_fields(layer, where):
    """Raise FpdeepError naming the field unless ``layer``'s fields have their types."""
    if not isinstance(layer.name, str) or not layer.name:
        raise FpdeepError(f"{where}: name must be a non-empty string, not {layer.name!r}")
    for name, kind in _FIELDS[type(layer)].items():
        value = getattr(layer, name)
        low = 0 if kind in ("pad", "padpair") else 1
        if kind == "optional" and value is None:
            continue
        if kind in ("pair", "padpair") and isinstance(value, (list, tuple)):
            ok = len(value) == 2 and all(_is_size(v, low) for v in value)
        else:
            ok = _is_size(value, low)
        if not ok:
            want = (f"an int from {low} to {MAX_SIZE}" +
                    (" or a pair of them" if kind in ("pair", "padpair") else ""))
            raise FpdeepError(f"{where} ({layer.name!r}): {name} must be {want}, "
                              f"not {value!r}")


def load_network(path):
    """Read a network from a ``.json``, ``.yaml`` or ``.yml`` file.

    Raises
    ------
    FpdeepError
        If the file is missing, cannot be parsed, or describes a bad network.
    """
    path = os.fspath(path)
    text = read_text(path, what="network file")
    check_nesting(text, what="network file", path=path)
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise FpdeepError(f"malformed network file {path!r}: nested too deeply") from None
    except Exception as error:     # json.JSONDecodeError, yaml.YAMLError, ValueError
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FpdeepError(f"malformed network file {path!r}: {first}") from None
    if not isinstance(spec, dict):
        raise FpdeepError(f"malformed network file {path!r}: expected a mapping at top level")
    return Network.from_dict(spec, source=path)


def _refuse_constant(name):
    # json accepts NaN, Infinity and -Infinity, which are not JSON and never a size.
    raise ValueError(f"{name} is not a number JSON allows")


def save_network(network, path):
    """Write ``network`` as JSON, or YAML if ``path`` ends in ``.yaml``/``.yml`` (atomic)."""
    path = os.fspath(path)
    if path.endswith((".yaml", ".yml")):
        import yaml
        text = yaml.safe_dump(network.to_dict(), sort_keys=False)
    else:
        text = json.dumps(network.to_dict(), indent=1) + "\n"
    atomic_write_text(path, text)


def digits_cnn():
    """The small CNN for 8x8 ``sklearn`` digits that fits one open board."""
    return Network("digits", (1, 8, 8), [
        Conv2d("conv1", 1, 4, kernel=3, padding=1),
        ReLU("relu1"),
        MaxPool2d("pool1"),
        Linear("fc1", 64, 10),
        SoftmaxCrossEntropy("loss"),
    ])


def weighted_layers(network):
    """Indices of the Conv2d and Linear layers, in order."""
    return [i for i, layer in enumerate(network.layers) if isinstance(layer, (Conv2d, Linear))]


def layer_geometry(network, index):
    """``(Cout, Cin, kh, kw, ph, pw)`` of a weighted layer, viewing FC as a full-map conv."""
    layer = network.layers[index]
    cin, h, w = network.input_shape_of(index)
    if isinstance(layer, Conv2d):
        kh, kw = layer.kernel_hw
        ph, pw = layer.padding_hw
        return layer.out_channels, cin, kh, kw, ph, pw
    return layer.out_features, cin, h, w, 0, 0
