"""ONNX importer (``pip install .[onnx]``): Conv, Relu, MaxPool, Gemm/MatMul, Flatten, Reshape.

The graph must be a single chain from one NCHW input (batch 1) to class scores:
each node's data input is the output of the node before it (the first node's is the
graph input), so a cycle, a branch or a node fed from nowhere is refused.
Conv must be stride 1 (or any stride, modelled for planning), without groups or
dilation; MaxPool 2×2/2 (or 3×3/2); Gemm/MatMul take a constant weight.
Flatten and Reshape are folded into the following linear layer. A softmax
cross-entropy loss is appended. Anything else is refused by node name and op type.

Only the shapes of the weights are read, never their data, and every size goes to
:class:`~fpdeep.plan.network.Network`, which checks it; so a damaged or hostile file
(truncated, flipped bytes, attributes of the wrong type, absurd dimensions) is
refused with :class:`FpdeepError` like any other bad network.
"""

from .errors import FpdeepError
from .network import Conv2d, ReLU, MaxPool2d, Linear, SoftmaxCrossEntropy, Network

__all__ = ["import_onnx", "SUPPORTED_OPS"]

SUPPORTED_OPS = {"Conv", "Relu", "MaxPool", "Gemm", "MatMul", "Flatten", "Reshape", "Add"}


class _Node:
    """One node's op, name and attributes, read once, with errors naming the node."""

    def __init__(self, model_name, node):
        from onnx import helper
        self.op = node.op_type
        self.inputs = list(node.input)
        self.label = f"ONNX model {model_name!r}: node {node.name or '(unnamed)'!r}"
        try:
            self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        except Exception as error:      # an attribute of no known type
            raise FpdeepError(f"{self.label} ({self.op}): unreadable attribute: "
                              f"{error}") from None

    def error(self, message):
        return FpdeepError(f"{self.label} ({self.op}): {message}")

    def ints(self, key, default, count):
        """Attribute ``key`` as a list of ``count`` ints (``default`` if absent)."""
        value = self.attrs.get(key, default)
        if (not isinstance(value, (list, tuple)) or len(value) != count
                or not all(isinstance(v, int) for v in value)):
            raise self.error(f"attribute {key!r} must be {count} ints, not {value!r}")
        return list(value)

    def int(self, key, default):
        value = self.attrs.get(key, default)
        if not isinstance(value, int):
            raise self.error(f"attribute {key!r} must be an int, not {value!r}")
        return value

    def weight(self, inits, ndim):
        """The shape of the constant weight that is this node's second input."""
        shape = inits.get(self.inputs[1])
        if shape is None or len(shape) != ndim:
            raise self.error(f"the weight must be a constant of {ndim} dimensions"
                             + (f", not {len(shape)}" if shape is not None else ""))
        return shape

    def refuse_attrs(self, *keys):
        """Refuse attributes this importer would otherwise ignore, changing the shapes."""
        for key in keys:
            if key in self.attrs and self.attrs[key] not in (0, b"NOTSET", b""):
                raise self.error(f"attribute {key}={self.attrs[key]!r} is not supported")


def import_onnx(model_or_path, name=None):
    """A :class:`Network` from an ONNX model (a path or a ``ModelProto``).

    Raises
    ------
    FpdeepError
        If onnx is not installed, the file cannot be read, or the graph is not a chain
        of supported nodes with sizes a network may have.
    """
    try:
        import onnx
    except ImportError:
        raise FpdeepError("ONNX import needs the onnx package: pip install .[onnx]") from None
    if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "__fspath__"):
        try:
            # The weights' data are never used: external data files stay unread.
            model = onnx.load(model_or_path, load_external_data=False)
        except Exception as error:
            raise FpdeepError(f"cannot read ONNX model {str(model_or_path)!r}: "
                              f"{str(error).splitlines()[0] if str(error) else error}") from None
        name = name or str(model_or_path).rsplit("/", 1)[-1].removesuffix(".onnx")
    else:
        model = model_or_path
    graph = model.graph
    # The onnx package returns a string that is not UTF-8 as bytes.
    for text in [graph.name, *(t.name for t in graph.initializer),
                 *(i.name for i in graph.input)] + [
            text for node in graph.node
            for text in (node.name, node.op_type, *node.input, *node.output)]:
        if isinstance(text, bytes):
            raise FpdeepError(f"ONNX model {name or 'onnx'!r}: name {text!r} is not UTF-8")
    name = name or graph.name or "onnx"
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise FpdeepError(f"ONNX model {name!r}: needs exactly one data input, "
                          f"has {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(d > 0 for d in dims[1:]):
        raise FpdeepError(f"ONNX model {name!r}: input must be N x C x H x W with fixed C, H, W")
    layers = []
    counts = {}

    def fresh(prefix, node):
        if node.name:
            return node.name
        counts[prefix] = counts.get(prefix, 0) + 1
        return f"{prefix}{counts[prefix]}"

    flowing = inputs[0].name    # the tensor the chain has reached
    for node in graph.node:
        op = node.op_type
        if op not in SUPPORTED_OPS:
            raise FpdeepError(f"ONNX model {name!r}: node {node.name or '(unnamed)'!r} has "
                              f"unsupported op type {op!r}")
        wanted = 2 if op in ("Conv", "Gemm", "MatMul", "Add") else 1
        if len(node.input) < wanted or not all(node.input[:wanted]):
            raise FpdeepError(f"ONNX model {name!r}: node {node.name or '(unnamed)'!r} "
                              f"({op}) has {len([i for i in node.input if i])} inputs, "
                              f"needs {wanted}")
        node_ = _Node(name, node)
        data = [i for i in node.input[:wanted] if i not in inits] if op == "Add" else \
            [node.input[0]]
        if data != [flowing]:
            raise node_.error(f"takes {data}, not the output {flowing!r} of the node before "
                              f"it: the graph must be one chain")
        if len(node.output) < 1 or not node.output[0]:
            raise node_.error("has no output")
        flowing = node.output[0]
        if op == "Conv":
            w = node_.weight(inits, 4)
            if node_.int("group", 1) != 1 or any(d != 1 for d in node_.ints("dilations",
                                                                              [1, 1], 2)):
                raise node_.error("grouped or dilated Conv is not supported")
            node_.refuse_attrs("auto_pad")
            pads = node_.ints("pads", [0, 0, 0, 0], 4)
            if pads[:2] != pads[2:]:
                raise node_.error("asymmetric padding is not supported")
            strides = node_.ints("strides", [1, 1], 2)
            if strides[0] != strides[1]:
                raise node_.error("unequal strides are not supported")
            layers.append(Conv2d(fresh("conv", node), w[1], w[0], kernel=(w[2], w[3]),
                                 padding=(pads[0], pads[1]), stride=strides[0]))
        elif op == "Relu":
            layers.append(ReLU(fresh("relu", node)))
        elif op == "MaxPool":
            kernel = node_.ints("kernel_shape", [2, 2], 2)
            strides = node_.ints("strides", kernel, 2)
            node_.refuse_attrs("auto_pad", "ceil_mode", "storage_order")
            if kernel[0] != kernel[1] or strides[0] != strides[1] or any(
                    node_.ints("pads", [0, 0, 0, 0], 4)) or any(
                    d != 1 for d in node_.ints("dilations", [1, 1], 2)):
                raise node_.error("MaxPool must be square, unpadded")
            layers.append(MaxPool2d(fresh("pool", node), size=kernel[0], stride=strides[0]))
        elif op in ("Gemm", "MatMul"):
            w = node_.weight(inits, 2)
            if op == "Gemm":
                node_.refuse_attrs("transA")
            trans_b = node_.int("transB", 0) if op == "Gemm" else 0
            out_f, in_f = (w if trans_b else w[::-1])
            layers.append(Linear(fresh("fc", node), in_f, out_f))
        elif op == "Add":
            # Only a bias add after MatMul (the MatMul + Add form of a linear layer).
            if not layers or not isinstance(layers[-1], Linear) or not any(
                    i in inits for i in node.input[:2]):
                raise FpdeepError(f"ONNX model {name!r}: node {node.name or '(unnamed)'!r} has "
                                  f"unsupported op type 'Add' (only a bias after MatMul)")
        # Flatten / Reshape: the next Linear flattens its input itself.
    if not any(isinstance(layer, (Conv2d, Linear)) for layer in layers):
        raise FpdeepError(f"ONNX model {name!r}: has no Conv, Gemm or MatMul layer to train")
    layers.append(SoftmaxCrossEntropy("loss"))
    return Network(name, tuple(dims[1:]), layers)
