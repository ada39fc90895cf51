import json

import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import (Network, Conv2d, ReLU, MaxPool2d, Linear, SoftmaxCrossEntropy,
                                 digits_cnn, load_network, save_network)
from fpdeep.plan import zoo


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_round_trip(tmp_path, name, suffix):
    net = zoo.get(name)
    path = tmp_path / f"net{suffix}"
    save_network(net, path)
    again = load_network(path)
    assert again.to_dict() == net.to_dict()
    assert again.shapes == net.shapes


def test_digits_dict_unchanged_by_stride_field():
    layers = digits_cnn().to_dict()["layers"]
    assert "stride" not in layers[0] and "stride" not in layers[2]


def test_alexnet_is_planning_only():
    assert zoo.get("alexnet").gateware_unsupported() == ["conv1", "pool1", "pool2", "pool5"]
    assert zoo.get("vgg16").gateware_unsupported() == []


@pytest.mark.parametrize("text, message", [
    ("{", "malformed network file"),
    ('{"name": "x"}', "missing field"),
    ('{"name": "x", "input_shape": [1, 4, 4], "layers": [{"type": "Dropout", "name": "d"}]}',
     "unsupported type 'Dropout'"),
    ('[1, 2]', "expected a mapping"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(FpdeepError, match=message):
        load_network(path)


def test_missing_file(tmp_path):
    with pytest.raises(FpdeepError, match="cannot read"):
        load_network(tmp_path / "nope.json")


def test_bad_pool():
    with pytest.raises(FpdeepError, match="pool"):
        Network("x", (1, 6, 6), [MaxPool2d("pool", size=4), SoftmaxCrossEntropy()])
