"""Training data for any network: the digits resized to its input, or the user's file.

:func:`dataset_for` gives a :class:`Dataset` shaped for a network's input ``(C, H,
W)`` and class count, from one of two sources:

* **The digits** (default): ``sklearn.datasets.load_digits()``, 1,797 8x8 images
  with grey levels 0-16 and 10 classes.

  - *Values*: each grey level ``g`` becomes ``g / 16``, a float in [0, 1].
  - *Pixels*: :func:`resize_bilinear` maps each output pixel centre back into the
    8x8 image, ``src = (dst + 0.5) * 8 / H - 0.5`` per axis (pixel centres line
    up, as in OpenCV and PyTorch ``align_corners=False``), clamps it to ``[0, 7]``
    and interpolates the four neighbours linearly. At 8x8 it is the identity, so
    the digits network sees exactly the data it always did.
  - *Channels*: the grey map is copied into every one of the ``C`` channels.
  - The network must have 10 classes.

* **A file** (``--data FILE.npz``): arrays ``x`` (N, C, H, W) of floats and ``y``
  (N,) of integer labels in ``[0, classes)``, and optionally a held-out split
  ``x_test``, ``y_test``. ``x`` must match the network's input exactly (no resizing).

The data stay floats here. :meth:`fpdeep.sim.reference.Reference.quantize_input`
quantizes each sample as the engines receive it: rounded to the nearest
activation step (Q6.10, 2^-10) and saturated to its range, ±32 (the numerics of
``rtl/numerics.py``).

Wrong shapes, class counts or types raise :class:`FpdeepError` in one line naming
both sides.
"""

from dataclasses import dataclass
import os

import numpy as np

from ..plan.errors import FpdeepError

__all__ = ["Dataset", "resize_bilinear", "digits_dataset", "load_npz", "dataset_for",
           "training_split", "DIGITS_CLASSES", "TRAIN_SIZE", "SPLIT_SEED"]

DIGITS_CLASSES = 10
#: The digits' fixed split: this many training samples, the rest held out.
TRAIN_SIZE = 1400
SPLIT_SEED = 0


@dataclass
class Dataset:
    """Float samples ``x`` (N, C, H, W), labels ``y`` (N,), and a held-out split
    (``x_test``, ``y_test``, empty if the source has none); ``source`` names it."""
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def samples(self, count, *, seed=0):
        """``count`` training samples in an order drawn from ``seed``: a permutation
        of all of them, repeated (epoch after epoch) if ``count`` is larger."""
        order = np.random.default_rng(seed).permutation(len(self.y))
        order = np.resize(order, count)
        return self.x[order], self.y[order]

    def split(self, *, train_size=None, split_seed=SPLIT_SEED):
        """``(x_train, y_train, x_test, y_test)``: the file's held-out split, or, if it
        has none, a fixed permutation's last 22 % (the digits' 397 of 1,797)."""
        if len(self.y_test):
            return self.x, self.y, self.x_test, self.y_test
        n = len(self.y)
        if train_size is None:
            train_size = round(n * TRAIN_SIZE / 1797)
        if not 1 <= train_size < n:
            raise FpdeepError(f"{self.source}: {n} samples cannot be split into "
                              f"{train_size} for training and the rest held out")
        order = np.random.default_rng(split_seed).permutation(n)
        train, test = order[:train_size], order[train_size:]
        return self.x[train], self.y[train], self.x[test], self.y[test]


def resize_bilinear(images, height, width):
    """Resize ``images`` (N, C, h, w) to (N, C, height, width), bilinearly, pixel
    centres aligned (see the module docstring)."""
    images = np.asarray(images, dtype=np.float64)
    _, _, h, w = images.shape

    def axis(size, out):
        src = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, src - lo
    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    rows = (images[:, :, y0, :] * (1 - fy)[:, None] + images[:, :, y1, :] * fy[:, None])
    return rows[:, :, :, x0] * (1 - fx) + rows[:, :, :, x1] * fx


def digits_dataset(shape, classes):
    """The digits as (N, C, H, W) = (1797, *shape), for a network of ``classes``."""
    from sklearn.datasets import load_digits
    if classes != DIGITS_CLASSES:
        raise FpdeepError(f"the digits have {DIGITS_CLASSES} classes, the network "
                          f"{classes}; give --data FILE.npz with its own labels")
    c, h, w = shape
    digits = load_digits()
    grey = digits.images.astype(np.float64)[:, None] / 16.0
    x = resize_bilinear(grey, h, w) if (h, w) != grey.shape[2:] else grey
    x = np.repeat(x, c, axis=1)
    y = digits.target.astype(np.int64)
    return Dataset(x, y, x[:0], y[:0], "the digits")


def _labels(array, classes, where):
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer)
                               or np.issubdtype(array.dtype, np.bool_)):
        raise FpdeepError(f"{where} must be a 1-D array of integer labels, not "
                          f"{array.dtype} of shape {array.shape}")
    if len(array) and (array.min() < 0 or array.max() >= classes):
        raise FpdeepError(f"{where} holds labels {array.min()}..{array.max()}, the "
                          f"network has {classes} classes (0..{classes - 1})")
    return array.astype(np.int64)


def _samples(array, shape, where):
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
        raise FpdeepError(f"{where} has shape {tuple(array.shape)}, the network's input "
                          f"is (N, {', '.join(map(str, shape))})")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype,
                                                                     np.integer)):
        raise FpdeepError(f"{where} must hold numbers, not {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise FpdeepError(f"{where} holds NaN or infinite values")
    return array


def load_npz(path, shape, classes):
    """A :class:`Dataset` from an ``.npz`` file (module docstring), checked against a
    network's input ``shape`` and ``classes``."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FpdeepError(f"cannot read data file {path!r}: {first}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise FpdeepError(f"data file {path!r} has no array {key!r} (it has "
                              f"{', '.join(sorted(arrays)) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise FpdeepError(f"data file {path!r}: give both x_test and y_test, or neither")
    x = _samples(arrays["x"], shape, f"{path!r} x")
    y = _labels(arrays["y"], classes, f"{path!r} y")
    if len(x) != len(y) or not len(y):
        raise FpdeepError(f"data file {path!r}: x has {len(x)} samples, y {len(y)} labels")
    if "x_test" in arrays:
        x_test = _samples(arrays["x_test"], shape, f"{path!r} x_test")
        y_test = _labels(arrays["y_test"], classes, f"{path!r} y_test")
        if len(x_test) != len(y_test) or not len(y_test):
            raise FpdeepError(f"data file {path!r}: x_test has {len(x_test)} samples, "
                              f"y_test {len(y_test)} labels")
    else:
        x_test, y_test = x[:0], y[:0]
    return Dataset(x, y, x_test, y_test, f"data file {path!r}")


def dataset_for(network, data=None):
    """The :class:`Dataset` to train ``network`` on: ``data`` (an ``.npz`` path) or the
    digits resized to its input."""
    if data is None:
        return digits_dataset(network.input_shape, network.num_classes)
    return load_npz(data, network.input_shape, network.num_classes)


def training_split(network, *, data=None, train_samples=None, batch):
    """``(dataset, (x_train, y_train, x_test, y_test))``: :func:`dataset_for`'s split, the
    training part cut to its first ``train_samples`` (quick runs), as ``fpdeep train``
    trains on it in every mode.

    Raises
    ------
    FpdeepError
        For data that do not fit ``network``, or a ``train_samples`` or ``batch``
        that the training split cannot give.
    """
    dataset = dataset_for(network, data)
    x_train, y_train, x_test, y_test = dataset.split()
    if train_samples is not None:
        if not isinstance(train_samples, int) or not 1 <= train_samples <= len(x_train):
            raise FpdeepError(f"--train-samples must be from 1 to {len(x_train)}, "
                              f"not {train_samples!r}")
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    if isinstance(batch, int) and batch > len(x_train):
        raise FpdeepError(f"batch size {batch} exceeds the {len(x_train)} training samples")
    return dataset, (x_train, y_train, x_test, y_test)
