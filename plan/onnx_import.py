"""ONNX importer (``pip install .[onnx]``): Conv, Relu, MaxPool, Gemm/MatMul, Flatten, Reshape.

The graph must be a single chain from one NCHW input (batch 1) to class scores.
Conv must be stride 1 (or any stride, modelled for planning), without groups or
dilation; MaxPool 2×2/2 (or 3×3/2); Gemm/MatMul take a constant weight.
Flatten and Reshape are folded into the following linear layer. A softmax
cross-entropy loss is appended. Anything else is refused by node name and op type.
"""

from .errors import FpdeepError
from .network import Conv2d, ReLU, MaxPool2d, Linear, SoftmaxCrossEntropy, Network

__all__ = ["import_onnx", "SUPPORTED_OPS"]

SUPPORTED_OPS = {"Conv", "Relu", "MaxPool", "Gemm", "MatMul", "Flatten", "Reshape", "Add"}


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def import_onnx(model_or_path, name=None):
    """A :class:`Network` from an ONNX model (a path or a ``ModelProto``).

    Raises
    ------
    FpdeepError
        If onnx is not installed, the file cannot be read, or a node is unsupported.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise FpdeepError("ONNX import needs the onnx package: pip install .[onnx]") from None
    if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "__fspath__"):
        try:
            model = onnx.load(model_or_path)
        except Exception as error:
            raise FpdeepError(f"cannot read ONNX model {str(model_or_path)!r}: "
                              f"{str(error).splitlines()[0] if str(error) else error}") from None
        name = name or str(model_or_path).rsplit("/", 1)[-1].removesuffix(".onnx")
    else:
        model = model_or_path
    graph = model.graph
    name = name or graph.name or "onnx"
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
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
        attrs = _attrs(node)
        if op == "Conv":
            w = inits.get(node.input[1])
            if w is None:
                raise FpdeepError(f"ONNX node {node.name!r}: Conv weight must be a constant")
            if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1])):
                raise FpdeepError(f"ONNX node {node.name!r}: grouped or dilated Conv is "
                                  f"not supported")
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise FpdeepError(f"ONNX node {node.name!r}: asymmetric padding is not "
                                  f"supported")
            strides = list(attrs.get("strides", [1, 1]))
            if strides[0] != strides[1]:
                raise FpdeepError(f"ONNX node {node.name!r}: unequal strides not supported")
            layers.append(Conv2d(fresh("conv", node), int(w.shape[1]), int(w.shape[0]),
                                 kernel=(int(w.shape[2]), int(w.shape[3])),
                                 padding=(int(pads[0]), int(pads[1])), stride=int(strides[0])))
        elif op == "Relu":
            layers.append(ReLU(fresh("relu", node)))
        elif op == "MaxPool":
            kernel = list(attrs.get("kernel_shape", [2, 2]))
            strides = list(attrs.get("strides", kernel))
            if kernel[0] != kernel[1] or strides[0] != strides[1] or any(attrs.get("pads", [0])):
                raise FpdeepError(f"ONNX node {node.name!r}: MaxPool must be square, "
                                  f"unpadded")
            layers.append(MaxPool2d(fresh("pool", node), size=int(kernel[0]),
                                    stride=int(strides[0])))
        elif op in ("Gemm", "MatMul"):
            w = inits.get(node.input[1])
            if w is None or w.ndim != 2:
                raise FpdeepError(f"ONNX node {node.name!r}: {op} weight must be a constant "
                                  f"matrix")
            trans_b = attrs.get("transB", 0) if op == "Gemm" else 0
            out_f, in_f = (w.shape if trans_b else w.shape[::-1])
            layers.append(Linear(fresh("fc", node), int(in_f), int(out_f)))
        elif op == "Add":
            # Only a bias add after MatMul (the MatMul + Add form of a linear layer).
            if not layers or not isinstance(layers[-1], Linear) or not any(
                    i in inits for i in node.input):
                raise FpdeepError(f"ONNX model {name!r}: node {node.name or '(unnamed)'!r} has "
                                  f"unsupported op type 'Add' (only a bias after MatMul)")
        # Flatten / Reshape: the next Linear flattens its input itself.
    layers.append(SoftmaxCrossEntropy("loss"))
    return Network(name, tuple(int(d) for d in dims[1:]), layers)
