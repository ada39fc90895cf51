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
