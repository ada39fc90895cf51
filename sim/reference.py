"""The NumPy reference: what the gateware must compute, in integer and float modes.

``Reference(network, mode="int")`` follows :mod:`fpdeep.rtl.numerics` exactly:
every sum is exact in ``int64`` and each rounding and saturation happens where
the engines do it, so the gateware equals it bit for bit.
``mode="float"`` is the same network in float64, for accuracy comparisons and
gradient checks; its loss is the exact softmax cross-entropy.

Layer semantics (both modes)
----------------------------
* A fully-connected layer is a convolution whose kernel covers its whole input
  map (no padding, a 1x1 output); its weights ``(out, C*H*W)`` are viewed as
  ``(out, C, H, W)``. One code path therefore serves conv and FC, as in the engines.
* FP: ``z = requantize(W * x + b)`` into the activation format; ReLU; 2x2
  max-pool, whose first largest element (row-major in the window) wins.
* BP: ``e_in = requantize(W^T * e)`` (a transposed convolution) into the error
  format, then the max-pool routing and the ReLU derivative (``a > 0``) of the
  layers in front. The first weighted layer has no BP.
* WU: the batch sum of ``e * x`` products, exact, then one SGD step per
  mini-batch (:func:`fpdeep.rtl.numerics.sgd_step_np`).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..plan.errors import FpdeepError
from ..plan.network import (Conv2d, Linear, MaxPool2d, ReLU, SoftmaxCrossEntropy, layer_geometry,
                            weighted_layers)
from ..rtl.masters import init_masters
from ..rtl.numerics import (DEFAULT_NUMERICS, LOSS_FRAC, LOSS_SUM_WIDTH, cross_entropy_np,
                            master_to_weight_np, requantize_np, saturating_add_np, sgd_step_np,
                            softmax_error_np)

__all__ = ["Reference", "init_masters", "weighted_layers", "layer_geometry",
           "conv_forward_acc", "conv_backward_acc", "conv_weight_grad_acc",
           "maxpool_forward", "maxpool_backward", "softmax_cross_entropy"]


def _patches(x, kh, kw, ph, pw):
    """``p[c, ky, kx, y, x] = xpad[c, y + ky, x + kx]``."""
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    windows = sliding_window_view(xp, (kh, kw), axis=(1, 2))   # c, y, x, ky, kx
    return windows.transpose(0, 3, 4, 1, 2)


def conv_forward_acc(x, w, b, ph, pw, bias_one):
    """Exact ``sum W * x + b * bias_one`` over a (C, H, W) map; any numeric dtype."""
    cout, cin, kh, kw = w.shape
    acc = np.einsum("oikl,iklyx->oyx", w, _patches(x, kh, kw, ph, pw))
    return acc + (b * bias_one)[:, None, None]


def conv_backward_acc(e, w, ph, pw):
    """Exact transposed convolution: ``e_in[i,y,x] = sum W[o,i,ky,kx] e[o, y-ky+ph, x-kx+pw]``."""
    cout, cin, kh, kw = w.shape
    flipped = w[:, :, ::-1, ::-1]
    return np.einsum("oikl,oklyx->iyx", flipped, _patches(e, kh, kw, kh - 1 - ph, kw - 1 - pw))


def conv_weight_grad_acc(x, e, kh, kw, ph, pw, bias_one):
    """Exact weight and bias gradient sums of one sample: ``(sum e * x, sum e * bias_one)``."""
    gw = np.einsum("oyx,iklyx->oikl", e, _patches(x, kh, kw, ph, pw))
    return gw, e.sum(axis=(1, 2)) * bias_one


def maxpool_forward(a):
    """2x2 max-pool; returns ``(pooled, winner)`` with winner in 0..3 = 2*dy + dx."""
    c, h, w = a.shape
    windows = a.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(
        c, h // 2, w // 2, 4)
    winner = np.argmax(windows, axis=-1)          # first largest, as the gateware compares
    return np.take_along_axis(windows, winner[..., None], -1)[..., 0], winner


def maxpool_backward(e, winner):
    """Route each pooled error to the winning position of its window."""
    c, h2, w2 = e.shape
    out = np.zeros((c, h2, w2, 4), dtype=e.dtype)
    np.put_along_axis(out, winner[..., None], e[..., None], -1)
    return out.reshape(c, h2, w2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, 2 * h2, 2 * w2)


def softmax_cross_entropy(logits, label):
    """Float loss and its gradient ``p - onehot``."""
    z = logits - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    grad = p.copy()
    grad[label] -= 1.0
    return float(-np.log(max(p[label], 1e-300))), grad


class Reference:
    """Mini-batch SGD training of a :class:`~fpdeep.plan.network.Network`.

    Parameters
    ----------
    network : Network
    mode : "int" or "float"
    numerics : Numerics
    lr : float
        Learning rate of the batch-mean gradient.
    momentum : float
        Momentum (0 disables it).
    batch_size : int
    masters : dict, optional
        Initial int64 master weights (``init_masters``); by default ``init_masters(seed)``.
        The float mode starts from the same values.

    Attributes
    ----------
    samples, correct, batches : int
        The host counters: samples trained, first largest logit equal to the label,
        mini-batches completed.
    loss_sum : int or float
        The host's loss counter. Int mode: the gateware's value exactly, the saturating
        32-bit sum of :func:`~fpdeep.rtl.numerics.cross_entropy_np` (bits, with
        ``LOSS_FRAC`` fraction bits). Float mode: the sum of the exact cross-entropies,
        in bits.
    loss_sum_exact : float
        Both modes: the sum of the exact softmax cross-entropies, in bits, of the logits
        this mode computed, to compare the fixed-point loss with.
    saturations : dict
        Saturation events of FP, BP and the weight update (int mode).
    """

    def __init__(self, network, *, mode="int", numerics=DEFAULT_NUMERICS, lr=0.1, momentum=0.0,
                 batch_size=8, seed=0, masters=None):
        if mode not in ("int", "float"):
            raise FpdeepError(f"reference mode must be 'int' or 'float', not {mode!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FpdeepError(f"batch size must be a positive int, not {batch_size!r}")
        if not 0.0 <= momentum < 1.0:
            raise FpdeepError(f"momentum must be in [0, 1), not {momentum}")
        self.network, self.mode, self.numerics = network, mode, numerics
        self.batch_size, self.lr, self.momentum = batch_size, lr, momentum
        self.rate_q = numerics.rate_from_float(lr / batch_size)
        self.momentum_q = numerics.rate_from_float(momentum, name="momentum") if momentum else 0
        self.weighted = weighted_layers(network)
        masters = masters if masters is not None else init_masters(network, numerics, seed)
        self.params = {}
        self.velocity = {}
        for index in self.weighted:
            name = network.layers[index].name
            w, b = masters[name]
            if mode == "float":
                w, b = numerics.master.to_float(w), numerics.master.to_float(b)
            else:
                w, b = np.array(w, dtype=np.int64), np.array(b, dtype=np.int64)
            self.params[name] = [w, b]
            self.velocity[name] = [np.zeros_like(w), np.zeros_like(b)]
        self.saturations = {"fp": 0, "bp": 0, "update": 0}
        self.samples = self.correct = self.batches = 0
        self.loss_sum = 0 if mode == "int" else 0.0
        self.loss_sum_exact = 0.0
        self._refresh_weights(count=False)    # the gateware's initial copies are elaborated

    # -- weights -------------------------------------------------------------------------

    def _refresh_weights(self, count=True):
        """The weights FP and BP read: 16-bit copies of the masters (int), or the masters."""
        self.weights = {}
        for name, (w, b) in self.params.items():
            if self.mode == "int":
                (wq, sw), (bq, sb) = (master_to_weight_np(w, self.numerics),
                                      master_to_weight_np(b, self.numerics))
                self.saturations["update"] += (sw + sb) if count else 0
                self.weights[name] = (wq, bq)
            else:
                self.weights[name] = (w, b)

    def quantize_input(self, x):
        """A float sample as the engines receive it (int mode) or as it is (float)."""
        x = np.asarray(x, dtype=np.float64)
        return self.numerics.act.from_float(x) if self.mode == "int" else x

    # -- one sample ----------------------------------------------------------------------

    def forward(self, x):
        """Returns ``(logits, cache)``; ``x`` is a quantized (int) or float (C, H, W) map."""
        n, integer = self.numerics, self.mode == "int"
        cache = [x]
        for index, layer in enumerate(self.network.layers):
            if isinstance(layer, (Conv2d, Linear)):
                _, _, kh, kw, ph, pw = layer_geometry(self.network, index)
                wq, bq = self.weights[layer.name]
                wq = wq.reshape(wq.shape[0], x.shape[0], kh, kw)
                acc = conv_forward_acc(x, wq, bq, ph, pw, n.act.one if integer else 1.0)
                if integer:
                    x, sat = requantize_np(acc, n.act.frac + n.weight.frac, n.act)
                    self.saturations["fp"] += sat
                else:
                    x = acc
            elif isinstance(layer, ReLU):
                x = np.maximum(x, 0)
            elif isinstance(layer, MaxPool2d):
                x, winner = maxpool_forward(x)
                cache.append(winner)
                cache.append(x)
                continue
            elif isinstance(layer, SoftmaxCrossEntropy):
                cache.append(None)
                continue
            cache.append(x)
        return x[:, 0, 0], cache

    def backward(self, cache, label, *, errors=None):
        """Returns ``{layer: (grad_w, grad_b)}`` for one sample, and updates the counters.

        Int mode: exact sums with ``act.frac + error.frac`` fraction bits. Float: gradients.
        If ``errors`` is a dict, it also receives the error at the output of every layer
        that the error reaches, keyed by layer name (see :meth:`output_errors`).
        """
        n, integer = self.numerics, self.mode == "int"
        logits = cache[-2][:, 0, 0]
        if integer:
            error, predicted = softmax_error_np(logits, label, n)
            loss, _ = softmax_cross_entropy(n.act.to_float(logits), label)
            self.loss_sum = saturating_add_np(self.loss_sum, cross_entropy_np(logits, label, n),
                                              LOSS_SUM_WIDTH)
        else:
            loss, error = softmax_cross_entropy(logits, label)
            predicted = int(np.argmax(logits))
            self.loss_sum += loss / np.log(2)
        self.samples += 1
        self.correct += int(predicted == label)
        self.loss_sum_exact += loss / np.log(2)
        e = error[:, None, None]
        grads = {}
        first = self.weighted[0]
        position = len(cache) - 2            # cache index of the current layer output
        for index in range(len(self.network.layers) - 2, -1, -1):
            layer = self.network.layers[index]
            if errors is not None and index >= first:
                errors[layer.name] = e
            if isinstance(layer, MaxPool2d):
                winner = cache[position - 1]
                e = maxpool_backward(e, winner)
                position -= 2
                continue
            x_in = cache[position - 1]
            if isinstance(layer, ReLU):
                e = np.where(cache[position] > 0, e, 0)
            else:
                _, _, kh, kw, ph, pw = layer_geometry(self.network, index)
                wq, _ = self.weights[layer.name]
                wq = wq.reshape(wq.shape[0], x_in.shape[0], kh, kw)
                gw, gb = conv_weight_grad_acc(x_in, e, kh, kw, ph, pw,
                                              n.act.one if integer else 1.0)
                grads[layer.name] = (gw, gb)
                if index != first:
                    acc = conv_backward_acc(e, wq, ph, pw)
                    if integer:
                        e, sat = requantize_np(acc, n.weight.frac + n.error.frac, n.error)
                        self.saturations["bp"] += sat
                    else:
                        e = acc
            position -= 1
        return grads

    def loss_and_grads(self, x, label):
        """Float mode: loss and gradients of one sample (for gradient checks)."""
        logits, cache = self.forward(x)
        grads = self.backward(cache, label)
        loss, _ = softmax_cross_entropy(logits, label)
        return loss, grads

    def output_errors(self, x, label):
        """The error at the output of every layer for one sample, ``{layer name: e}``.

        ``e`` is shaped like the layer's output: d loss / d output in float mode, the
        error-format integers that BP carries in int mode. The error at a layer's input
        is the entry of the layer in front of it (so the loss layer itself is absent).
        The first weighted layer has no BP, so layers in front of it are absent too.
        Used by the gradient checks.
        """
        _, cache = self.forward(x)
        errors = {}
        self.backward(cache, label, errors=errors)
        return errors

    # -- training ------------------------------------------------------------------------

    def train_batch(self, xs, labels):
        """One mini-batch: FP, loss, BP, WU of each sample, then one SGD step."""
        if len(xs) != self.batch_size or len(labels) != self.batch_size:
            raise FpdeepError(f"a mini-batch holds {self.batch_size} samples, "
                              f"not {len(xs)}")
        sums = None
        for x, label in zip(xs, labels):
            _, cache = self.forward(x)
            grads = self.backward(cache, int(label))
            if sums is None:
                sums = {k: [g.copy() for g in v] for k, v in grads.items()}
            else:
                for k, v in grads.items():
                    sums[k][0] += v[0]
                    sums[k][1] += v[1]
        self.apply_gradients(sums)
        self.batches += 1

    def apply_gradients(self, sums):
        for name, (gw, gb) in sums.items():
            w, b = self.params[name]
            gw = gw.reshape(w.shape)
            vw, vb = self.velocity[name]
            if self.mode == "int":
                w, vw, sw = sgd_step_np(w, vw, gw, self.numerics, self.rate_q, self.momentum_q)
                b, vb, sb = sgd_step_np(b, vb, gb, self.numerics, self.rate_q, self.momentum_q)
                self.saturations["update"] += sw + sb
            else:
                rate = self.lr / self.batch_size
                vw, vb = self.momentum * vw + rate * gw, self.momentum * vb + rate * gb
                w, b = w - vw, b - vb
            self.params[name] = [w, b]
            self.velocity[name] = [vw, vb]
        self._refresh_weights()

    @property
    def mean_loss(self):
        """Mean cross-entropy per sample so far, in bits, from ``loss_sum``."""
        scale = (1 << LOSS_FRAC) if self.mode == "int" else 1
        return self.loss_sum / scale / self.samples if self.samples else 0.0

    def predict(self, x):
        logits, _ = self.forward(x)
        return int(np.argmax(logits))
