import json

import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import (Network, MaxPool2d, SoftmaxCrossEntropy,
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


def _conv_net(**conv):
    layer = {"type": "Conv2d", "name": "c", "in_channels": 1, "out_channels": 2,
             "kernel": 3, **conv}
    return {"name": "n", "input_shape": [1, 8, 8],
            "layers": [layer, {"type": "Linear", "name": "fc", "in_features": 72,
                               "out_features": 10},
                       {"type": "SoftmaxCrossEntropy", "name": "loss"}]}


@pytest.mark.parametrize("spec, words", [
    (_conv_net(out_channels=0), "out_channels must be an int from 1"),
    (_conv_net(out_channels=-2), "out_channels must be an int from 1"),
    (_conv_net(out_channels=2.5), "out_channels must be an int from 1"),
    (_conv_net(out_channels=True), "out_channels must be an int from 1"),
    (_conv_net(kernel=[3, "3"]), "kernel must be an int from 1"),
    (_conv_net(padding=-1), "padding must be an int from 0"),
    (_conv_net(out_channels=1 << 30), "out_channels must be an int from 1 to 16777216"),
    ({**_conv_net(), "input_shape": [1, 8, 8.0]}, "input shape must be three positive"),
    ({**_conv_net(), "name": ["x"]}, "name must be a non-empty string"),
    ({**_conv_net(), "layers": [{"type": ["Conv2d"]}]}, "unsupported type ['Conv2d']"),
])
def test_bad_sizes_and_types_are_refused_naming_the_field(tmp_path, spec, words):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(FpdeepError) as info:
        load_network(path)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert "net.json" in str(info.value)


@pytest.mark.parametrize("text, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"name": "\xff"}', "not UTF-8 text"),
    (b'{"name": "n", "input_shape": [1, 8, NaN], "layers": []}', "NaN is not a number"),
])
def test_deep_nesting_bad_utf8_and_nan_are_refused(tmp_path, text, words):
    path = tmp_path / "net.json"
    path.write_bytes(text)
    with pytest.raises(FpdeepError, match=words):
        load_network(path)
