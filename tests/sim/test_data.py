import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fpdeep.plan import zoo
from fpdeep.plan.errors import FpdeepError
from fpdeep.sim.data import dataset_for, digits_dataset, load_npz, resize_bilinear
from fpdeep.sim.harness import digits_samples


def test_digits_at_8x8_are_the_digits():
    data = digits_dataset((1, 8, 8), 10)
    x, y = data.samples(50, seed=4)
    want_x, want_y = digits_samples(50, seed=4)
    assert (x == want_x).all() and (y == want_y).all()


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), out_h=st.integers(1, 12),
       out_w=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_resize_is_bilinear_with_aligned_centres(h, w, out_h, out_w, seed):
    images = np.random.default_rng(seed).random((2, 3, h, w))
    out = resize_bilinear(images, out_h, out_w)
    assert out.shape == (2, 3, out_h, out_w)
    # A convex combination of the input, and the identity at the same size.
    assert images.min() - 1e-12 <= out.min() and out.max() <= images.max() + 1e-12
    assert np.allclose(resize_bilinear(images, h, w), images)
    # A linear ramp stays linear inside the pixel centres' span.
    ramp = np.arange(w, dtype=float)[None, None, None, :].repeat(h, axis=2)
    got = resize_bilinear(ramp, h, out_w)[0, 0, 0]
    src = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    assert np.allclose(got, src)


def test_lenet5_gets_32x32_digits_in_every_channel():
    data = dataset_for(zoo.get("lenet5"))
    assert data.x.shape == (1797, 1, 32, 32) and 0 <= data.x.min() and data.x.max() <= 1
    three = digits_dataset((3, 16, 16), 10)
    assert (three.x[:, 0] == three.x[:, 2]).all()


def test_digits_need_ten_classes():
    with pytest.raises(FpdeepError, match="the digits have 10 classes, the network 1000"):
        dataset_for(zoo.get("vgg16"))


def test_npz_with_and_without_held_out_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((40, 1, 8, 8)), y=rng.integers(0, 10, 40))
    data = load_npz(path, (1, 8, 8), 10)
    x_train, y_train, x_test, y_test = data.split()
    assert len(x_train) + len(x_test) == 40 and len(x_test) > 0
    np.savez(path, x=rng.random((40, 1, 8, 8)), y=rng.integers(0, 10, 40),
             x_test=rng.random((5, 1, 8, 8)), y_test=rng.integers(0, 10, 5))
    assert len(load_npz(path, (1, 8, 8), 10).split()[2]) == 5


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((4, 1, 9, 8)), "y": np.zeros(4, int)},
     "has shape (4, 1, 9, 8), the network's input is (N, 1, 8, 8)"),
    ({"x": np.zeros((4, 1, 8, 8)), "y": np.full(4, 12)},
     "holds labels 12..12, the network has 10 classes"),
    ({"x": np.zeros((4, 1, 8, 8)), "y": np.zeros(3, int)}, "x has 4 samples, y 3 labels"),
    ({"x": np.zeros((4, 1, 8, 8))}, "has no array 'y'"),
    ({"x": np.full((4, 1, 8, 8), np.nan), "y": np.zeros(4, int)}, "NaN"),
    ({"x": np.zeros((4, 1, 8, 8)), "y": np.zeros(4)}, "integer labels"),
    ({"x": np.zeros((4, 1, 8, 8)), "y": np.zeros(4, int), "x_test": np.zeros((1, 1, 8, 8))},
     "both x_test and y_test"),
])
def test_bad_npz_is_one_line(tmp_path, arrays, words):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(FpdeepError) as info:
        load_npz(path, (1, 8, 8), 10)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_not_an_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("hello")
    with pytest.raises(FpdeepError, match="cannot read data file"):
        load_npz(path, (1, 8, 8), 10)
