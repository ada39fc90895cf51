import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, TensorProto, numpy_helper

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import digits_cnn
from fpdeep.plan.onnx_import import import_onnx


def _model(nodes, inits, shape=(1, 1, 8, 8)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    inits = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in inits.items()]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def _digits(matmul=False):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Reshape" if matmul else "Flatten",
                              ["p", "s"] if matmul else ["p"], ["f"], name="flat")]
    if matmul:
        nodes.append(helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc1"))
        return _model(nodes, {"w1": (4, 1, 3, 3), "w2": (64, 10), "s": (2,)})
    nodes.append(helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc1", transB=1))
    return _model(nodes, {"w1": (4, 1, 3, 3), "w2": (10, 64)})


@pytest.mark.parametrize("matmul", [False, True])
def test_digits_from_onnx(matmul, tmp_path):
    path = tmp_path / "digits.onnx"
    onnx.save(_digits(matmul), path)
    net = import_onnx(path)
    ref = digits_cnn()
    assert net.shapes == ref.shapes
    assert [type(l) for l in net.layers] == [type(l) for l in ref.layers]
    assert [l.weight_count for l in net.layers] == [l.weight_count for l in ref.layers]


def test_unsupported_op_named():
    nodes = [helper.make_node("Sigmoid", ["x"], ["y"], name="squash")]
    with pytest.raises(FpdeepError, match="'squash' has unsupported op type 'Sigmoid'"):
        import_onnx(_model(nodes, {}))


def test_unreadable(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not onnx")
    with pytest.raises(FpdeepError, match="cannot read ONNX"):
        import_onnx(path)


@pytest.mark.parametrize("op, inputs", [("Conv", ["x"]), ("Gemm", ["x", ""]), ("Relu", []),
                                        ("MatMul", ["x"])])
def test_node_missing_inputs_is_refused_by_name(op, inputs):
    model = _model([helper.make_node(op, inputs, ["y"], name="lonely")], {})
    with pytest.raises(FpdeepError, match=f"node 'lonely' \\({op}\\) has .* inputs, needs"):
        import_onnx(model)


# Fuzzing: every damaged or hostile model is refused with FpdeepError (the one-line
# error of the command line) and never another exception or a hang.

def _shape_only(name, dims):
    """An initializer with dims but no data: the importer reads only shapes, and the
    fuzzed bytes then all fall on the model's structure."""
    return TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)


def _chain(nodes, inits, shape=(1, 1, 8, 8)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    return helper.make_model(helper.make_graph(
        nodes, "g", [x], [y], [_shape_only(n, d) for n, d in inits.items()]))


def _conv(**attrs):
    return helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", **attrs)


def _gemm(source="c", **attrs):
    return helper.make_node("Gemm", [source, "w2"], ["y"], name="fc1", **attrs)


CONV_FC = {"w1": [4, 1, 3, 3], "w2": [10, 144]}


def _with_attribute(node, name, kind):
    """``node`` with attribute ``name`` of the raw attribute type ``kind``, which the
    helper would not make (UNDEFINED, or a type the value does not have)."""
    node.attribute.append(onnx.AttributeProto(name=name, type=kind))
    return node


def _refused(model, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    with pytest.raises(FpdeepError) as info:
        import_onnx(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_fuzzed_model_is_valid(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_chain([_conv(), _gemm(transB=1)], CONV_FC).SerializeToString())
    assert [type(layer).__name__ for layer in import_onnx(path).layers] == [
        "Conv2d", "Linear", "SoftmaxCrossEntropy"]


@pytest.mark.parametrize("nodes, inits, shape, words", [
    # unknown ops, nodes missing inputs or outputs
    ([helper.make_node("Frobnicate", ["x"], ["y"], name="f")], {}, None, "'Frobnicate'"),
    ([_conv(), helper.make_node("Gemm", ["c"], ["y"], name="fc1")], CONV_FC, None,
     "has 1 inputs, needs 2"),
    ([helper.make_node("Relu", ["x"], [], name="r"), _gemm("x")], CONV_FC, None,
     "has no output"),
    # attributes of the wrong type or length
    ([_conv(pads=[1.5, 1.5, 1.5, 1.5]), _gemm()], CONV_FC, None, "'pads' must be 4 ints"),
    ([_conv(pads="1111"), _gemm()], CONV_FC, None, "'pads' must be 4 ints"),
    ([_conv(pads=[1, 1]), _gemm()], CONV_FC, None, "'pads' must be 4 ints"),
    ([_with_attribute(_conv(), "pads", onnx.AttributeProto.INTS), _gemm()], CONV_FC, None,
     "'pads' must be 4 ints, not []"),
    ([_conv(strides=2), _gemm()], CONV_FC, None, "'strides' must be 2 ints"),
    ([_conv(dilations=2), _gemm()], CONV_FC, None, "'dilations' must be 2 ints"),
    ([_conv(group="1"), _gemm()], CONV_FC, None, "'group' must be an int"),
    ([_conv(group=[1]), _gemm()], CONV_FC, None, "'group' must be an int"),
    ([_conv(), _gemm(transB=1.0)], CONV_FC, None, "'transB' must be an int"),
    ([_conv(), _gemm(transB=1, transA=1)], CONV_FC, None, "transA=1 is not supported"),
    ([_conv(auto_pad="SAME_UPPER"), _gemm()], CONV_FC, None, "auto_pad"),
    ([_conv(), helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3]), _gemm("p")],
     CONV_FC, None, "'kernel_shape' must be 2 ints"),
    ([_conv(), helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], ceil_mode=1),
      _gemm("p")], CONV_FC, None, "ceil_mode"),
    ([_with_attribute(_conv(), "pads", onnx.AttributeProto.UNDEFINED), _gemm()], CONV_FC,
     None, "'pads' must be 4 ints, not None"),
    ([_with_attribute(_conv(), "pads", onnx.AttributeProto.TENSOR), _gemm()], CONV_FC,
     None, "'pads' must be 4 ints"),
    # zero, negative and huge sizes, in the input and in the weights
    ([_conv(), _gemm()], CONV_FC, (1, 0, 8, 8), "input must be N x C x H x W"),
    ([_conv(), _gemm()], CONV_FC, (1, -1, 8, 8), "input must be N x C x H x W"),
    ([_conv(), _gemm()], CONV_FC, (1, 1, 8), "input must be N x C x H x W"),
    ([_conv(), _gemm()], CONV_FC, (1, 1, 2**40, 8), "input shape must be three positive"),
    ([_conv(), _gemm()], {"w1": [0, 1, 3, 3], "w2": [10, 144]}, None, "out_channels"),
    ([_conv(), _gemm()], {"w1": [4, 1, -3, 3], "w2": [10, 144]}, None, "kernel"),
    ([_conv(), _gemm(transB=1)], {"w1": [2**40, 1, 3, 3], "w2": [10, 144]}, None,
     "out_channels"),
    ([_conv(), _gemm(transB=1)], {"w1": [4, 1, 3, 3], "w2": [2**62, 144]}, None,
     "out_features"),
    ([_conv(pads=[-1, -1, -1, -1]), _gemm()], CONV_FC, None, "padding"),
    ([_conv(strides=[0, 0]), _gemm()], CONV_FC, None, "stride"),
    ([_conv(), _gemm(transB=1)], {"w1": [4, 2, 3, 3], "w2": [10, 144]}, None,
     "expects 2 input channels, gets 1"),
    # cycles, branches and nodes fed from nowhere
    ([helper.make_node("Relu", ["r"], ["r"], name="loop"), _gemm("r")], CONV_FC, None,
     "must be one chain"),
    ([helper.make_node("Relu", ["x"], ["a"], name="r1"),
      helper.make_node("Relu", ["b"], ["b2"], name="r2"),
      helper.make_node("Relu", ["b2"], ["b"], name="r3"), _gemm("b")], CONV_FC, None,
     "'r2' (Relu): takes ['b']"),
    ([_conv(), helper.make_node("Relu", ["x"], ["r"], name="branch"), _gemm("r")], CONV_FC,
     None, "must be one chain"),
    ([_gemm("x", transB=1), helper.make_node("Add", ["y", "y"], ["z"], name="residual")],
     {"w2": [10, 64]}, None, "must be one chain"),
    # missing initializers, weights of the wrong rank, nothing to train
    ([_conv(), _gemm()], {"w2": [10, 144]}, None, "weight must be a constant"),
    ([_conv(), _gemm()], {"w1": [4, 1, 3, 3]}, None, "weight must be a constant"),
    ([_conv(), _gemm()], {"w1": [4, 9], "w2": [10, 144]}, None, "of 4 dimensions, not 2"),
    ([_conv(), _gemm()], {"w1": [4, 1, 3, 3], "w2": [1440]}, None, "of 2 dimensions, not 1"),
    ([helper.make_node("Relu", ["x"], ["y"], name="r")], {}, None, "no Conv, Gemm or MatMul"),
    ([], {}, None, "no Conv, Gemm or MatMul"),
    # names used twice
    ([_conv(), helper.make_node("Relu", ["c"], ["r"], name="conv1"), _gemm("r")], CONV_FC,
     None, "used twice"),
])
def test_hostile_models_are_refused(tmp_path, nodes, inits, shape, words):
    message = _refused(_chain(nodes, inits, shape or (1, 1, 8, 8)), tmp_path)
    assert words in message, message


@pytest.mark.parametrize("name", [b"conv1", b"Conv", b"w1", b"g"])
def test_non_utf8_names_are_refused(tmp_path, name):
    # The onnx package hands such a string over as bytes.
    model = _chain([_conv(), _gemm(transB=1)], CONV_FC).SerializeToString()
    assert name in model
    message = _refused(model.replace(name, name[:-1] + b"\xff"), tmp_path)
    assert "is not UTF-8" in message and "\\xff" in message, message


def test_damaged_bytes_are_refused_or_still_a_model(tmp_path):
    """Seeded: truncations, byte flips, bit flips and insertions of a valid model. Each
    is read as a network or refused with FpdeepError, in well under a second."""
    import random
    import time
    good = _chain([_conv(pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["r"], name="relu1"),
                   helper.make_node("MaxPool", ["r"], ["p"], name="pool1",
                                    kernel_shape=[2, 2], strides=[2, 2]),
                   helper.make_node("Flatten", ["p"], ["f"], name="flat"),
                   helper.make_node("MatMul", ["f", "w2"], ["m"], name="fc1"),
                   helper.make_node("Add", ["m", "b2"], ["y"], name="bias1")],
                  {"w1": [4, 1, 3, 3], "w2": [64, 10], "b2": [10]}).SerializeToString()
    rng = random.Random(12)
    path = tmp_path / "m.onnx"
    outcomes = {"network": 0, "unparsable": 0, "refused": 0}
    for case in range(600):
        data = bytearray(good)
        how = case % 4
        if how == 0:
            data = data[:rng.randrange(len(data))]
        elif how == 1:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how == 2:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        path.write_bytes(bytes(data))
        start = time.monotonic()
        try:
            import_onnx(path)
            outcomes["network"] += 1
        except FpdeepError as error:
            assert "\n" not in str(error)
            outcomes["unparsable" if "cannot read" in str(error) else "refused"] += 1
        assert time.monotonic() - start < 1, (case, bytes(data))
    # Most mutations reach past the parser into the importer.
    assert outcomes["refused"] > 30 and outcomes["network"] > 5, outcomes
