import pytest

from fpdeep.plan import zoo
from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import Network, ReLU, Linear, SoftmaxCrossEntropy
from fpdeep.plan.workload import workload, totals


def test_digits_by_hand():
    conv, fc = workload(zoo.get("digits"))
    # conv1: 4 x 1 x 3 x 3 x 8 x 8 = 2304 MACs; first layer: no BP.
    assert (conv.fp_macs, conv.bp_macs, conv.wu_macs) == (2304, 0, 2304)
    assert conv.weights == 4 * 9 + 4
    assert conv.post_ops == ("relu1", "pool1")
    assert conv.activations_in == 64 and conv.activations_out == 64 and conv.errors_out == 0
    # fc1: 10 x 64.
    assert (fc.fp_macs, fc.bp_macs, fc.wu_macs) == (640, 640, 640)
    assert fc.weights == 650 and fc.errors_out == 64 and fc.errors_in == 10


def test_lenet5_by_hand():
    w = {x.name: x for x in workload(zoo.get("lenet5"))}
    assert w["conv1"].fp_macs == 6 * 25 * 28 * 28
    assert w["conv2"].fp_macs == 16 * 6 * 25 * 10 * 10
    assert w["fc1"].fp_macs == 400 * 120
    assert totals(workload(zoo.get("lenet5")))["weights"] == 61_706


@pytest.mark.parametrize("name, gmac, mweights", [
    ("alexnet", 0.72, 61), ("vgg16", 15.5, 138), ("vgg19", 19.6, 144)])
def test_standard_totals(name, gmac, mweights):
    t = totals(workload(zoo.get(name)))
    assert t["fp_macs"] / 1e9 == pytest.approx(gmac, rel=0.02)
    assert t["weights"] / 1e6 == pytest.approx(mweights, rel=0.01)
    # Training is about 3x forward.
    assert 2.8 < t["macs"] / t["fp_macs"] < 3.0


def test_relu_first_refused():
    net = Network("x", (4, 1, 1), [ReLU("r"), Linear("fc", 4, 2), SoftmaxCrossEntropy()])
    with pytest.raises(FpdeepError, match="'r' comes before"):
        workload(net)
