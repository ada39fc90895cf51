"""Tests of :mod:`fpdeep.sim.reference`: float gradients, integer semantics, bad input.

Float mode is checked against central differences of the loss on seeded random
networks holding every layer type. Int mode is checked against hand-computed
numbers (with the rounding rule of :mod:`fpdeep.rtl.numerics` applied by hand),
for saturation without wrap-around, and against float mode within quantization error.
"""

import numpy as np
import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import (Conv2d, Linear, MaxPool2d, Network, ReLU,
                                 SoftmaxCrossEntropy, digits_cnn)
from fpdeep.rtl.numerics import (DEFAULT_NUMERICS, EXP2_LUT, LOG2E_Q, cross_entropy_np,
                                 sgd_step_np, softmax_error_np)
from fpdeep.sim.reference import (Reference, init_masters, maxpool_backward, maxpool_forward,
                                  softmax_cross_entropy)

N = DEFAULT_NUMERICS
M16 = 1 << (N.master.frac - N.weight.frac)     # one weight LSB in master LSBs (2**16)


# ---- helpers ----------------------------------------------------------------------------

def float_masters(network, rng, *, scale=1.0):
    """Random masters for every weighted layer, biases included, in the master format."""
    masters = {}
    for name, (w, b) in init_masters(network, N, seed=int(rng.integers(1 << 30))).items():
        w = N.master.to_float(w) * scale
        b = rng.uniform(-0.5, 0.5, size=b.shape)
        masters[name] = (N.master.from_float(w), N.master.from_float(b))
    return masters


def float_loss(ref, x, label):
    logits, _ = ref.forward(x)
    return softmax_cross_entropy(logits, label)[0]


def kink_margin(network, cache):
    """Smallest distance of any ReLU input from 0 and of any max-pool winner from its
    runner-up, in a float-mode forward ``cache``."""
    margin, position = np.inf, 0
    for layer in network.layers:
        value = cache[position]
        if isinstance(layer, ReLU):
            margin = min(margin, np.abs(value).min())
        elif isinstance(layer, MaxPool2d):
            c, h, w = value.shape
            windows = np.sort(value.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4)
                              .reshape(c, h // 2, w // 2, 4), axis=-1)
            gap = windows[..., 3] - windows[..., 2]
            # Windows of ReLU zeros tie at exactly 0; the ReLU margin keeps them at 0.
            gap = gap[windows[..., 3] != 0.0]
            margin = min(margin, gap.min(initial=np.inf))
            position += 1                    # the winner indices take one more cache slot
        elif isinstance(layer, SoftmaxCrossEntropy):
            break
        position += 1
    return margin


# The layers between a 1x1 identity "probe" convolution and the final Linear + loss. The
# probe makes the error at the network input visible (its output error is the error at
# the input of the first layer under test), so every layer type's BP is checked as well
# as its gradients.
STRUCTURES = {
    "loss":                 [],
    "linear":               ["linear"],
    "relu":                 ["relu"],
    "pool":                 ["pool"],
    "conv":                 ["conv"],
    "conv-relu-pool":       ["conv", "relu", "pool"],
    "pool-conv-relu":       ["pool", "conv", "relu"],
    "conv-relu-conv-relu":  ["conv", "relu", "conv", "relu"],
    "relu-pool-conv":       ["relu", "pool", "conv"],
}


KERNELS = [(3, 3), (1, 1), (1, 3), (3, 1)]


def random_network(structure, seed):
    """A seeded random network: probe, the given layers, then Linear and the loss.

    Maps are never square. Kernels cycle through 3x3, 1x1, 1x3 and 3x1 with the seed;
    padding is 0 or 1 where the kernel is 3 wide (always 1 in front of a max-pool, to
    keep the pooled map even).
    """
    rng = np.random.default_rng(seed)
    kinds = STRUCTURES[structure]
    if not kinds:                            # the loss right behind the probe
        classes = int(rng.integers(2, 6))
        return Network(structure, (classes, 1, 1), [
            Conv2d("probe", classes, classes, kernel=1), SoftmaxCrossEntropy("loss")])
    step = 2 ** kinds.count("pool")
    h = step * int(rng.integers(2, 4))
    w = h + step * int(rng.integers(1, 3))
    if rng.random() < 0.5:
        h, w = w, h
    shape = current = (int(rng.integers(1, 4)), h, w)
    layers = [Conv2d("probe", shape[0], shape[0], kernel=1)]
    for index, kind in enumerate(kinds):
        c, h, w = current
        if kind == "conv":
            kernel = KERNELS[(seed + index) % len(KERNELS)]
            before_pool = "pool" in kinds[index + 1:]
            padding = tuple(1 if k == 3 and (before_pool or size < 3 or rng.random() < 0.5)
                            else 0 for k, size in zip(kernel, (h, w)))
            layer = Conv2d(f"conv{index}", c, int(rng.integers(1, 4)),
                           kernel=kernel if kernel[0] != kernel[1] else kernel[0],
                           padding=padding if padding[0] != padding[1] else padding[0])
        elif kind == "relu":
            layer = ReLU(f"relu{index}")
        elif kind == "pool":
            layer = MaxPool2d(f"pool{index}")
        else:
            layer = Linear(f"fc{index}", c * h * w, int(rng.integers(2, 6)))
        layers.append(layer)
        current = layer.output_shape(current)
    c, h, w = current
    layers += [Linear("out", c * h * w, int(rng.integers(2, 6))), SoftmaxCrossEntropy("loss")]
    return Network(structure, shape, layers)


def checked_sample(network, ref, seed):
    """A random input and label whose forward pass sits well away from ReLU kinks and
    max-pool ties, so that central differences see a smooth loss."""
    rng = np.random.default_rng(1000 + seed)
    for _ in range(100):
        x = rng.normal(0.0, 1.0, size=network.input_shape)
        _, cache = ref.forward(x)
        if kink_margin(network, cache) > 1e-3:
            return x, int(rng.integers(network.num_classes))
    raise AssertionError("no input away from kinks; choose another seed")


def central_difference(f, array, index, h=1e-6):
    saved = array[index]
    array[index] = saved + h
    up = f()
    array[index] = saved - h
    down = f()
    array[index] = saved
    return (up - down) / (2 * h)


def assert_close(analytic, numeric, what):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    assert analytic.shape == numeric.shape, what
    tolerance = 1e-6 + 1e-5 * np.abs(numeric)
    bad = np.abs(analytic - numeric) > tolerance
    assert not bad.any(), (f"{what}: analytic {analytic[bad]} vs central difference "
                           f"{numeric[bad]}")


# ---- float mode: gradient checks --------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("structure", STRUCTURES)
def test_float_gradients_match_central_differences(structure, seed):
    network = random_network(structure, seed)
    rng = np.random.default_rng(seed)
    ref = Reference(network, mode="float", batch_size=1, masters=float_masters(network, rng))
    probe = ref.params["probe"][0]
    probe[...] = np.eye(probe.shape[0]).reshape(probe.shape)      # identity 1x1 conv
    ref.params["probe"][1][...] = 0.0
    x, label = checked_sample(network, ref, seed)

    loss, grads = ref.loss_and_grads(x, label)
    assert loss == pytest.approx(float_loss(ref, x, label), rel=1e-12)
    assert set(grads) == {layer.name for layer in network.layers
                          if isinstance(layer, (Conv2d, Linear))}
    for name, (w, b) in ref.params.items():
        gw, gb = grads[name]
        loss_fn = lambda: float_loss(ref, x, label)
        assert_close(gw, np.array([central_difference(loss_fn, w, i)
                                   for i in np.ndindex(w.shape)]).reshape(w.shape),
                     f"{structure}/{seed}: d loss / d {name} weights")
        assert_close(gb, [central_difference(loss_fn, b, (i,)) for i in range(len(b))],
                     f"{structure}/{seed}: d loss / d {name} biases")

    # The identity probe's output error is the error at the input of the first layer
    # under test, so this checks BP through every layer behind the probe.
    errors = ref.output_errors(x, label)
    d_input = np.array([central_difference(lambda: float_loss(ref, x, label), x, i)
                        for i in np.ndindex(x.shape)]).reshape(x.shape)
    assert_close(errors["probe"], d_input, f"{structure}/{seed}: d loss / d input")


def test_output_errors_are_the_input_errors_of_the_next_layer():
    """Each layer's output error has its output's shape; the loss gets ``p - onehot``."""
    network = digits_cnn()
    ref = Reference(network, mode="float", batch_size=1, seed=3)
    x = np.random.default_rng(3).uniform(0, 1, (1, 8, 8))
    errors = ref.output_errors(x, 7)
    assert list(errors) == ["fc1", "pool1", "relu1", "conv1"]
    for index, layer in enumerate(network.layers[:-1]):
        assert errors[layer.name].shape == network.output_shape_of(index)
    logits, _ = ref.forward(x)
    np.testing.assert_allclose(errors["fc1"][:, 0, 0], softmax_cross_entropy(logits, 7)[1])
    assert np.all(errors["relu1"][errors["conv1"] != 0] != 0)
    assert np.all(errors["conv1"][ref.forward(x)[1][1] <= 0] == 0)


def test_softmax_cross_entropy_gradient_matches_central_differences():
    rng = np.random.default_rng(5)
    for _ in range(10):
        logits = rng.normal(0, 3, size=int(rng.integers(2, 11)))
        label = int(rng.integers(len(logits)))
        loss, grad = softmax_cross_entropy(logits, label)
        f = lambda: softmax_cross_entropy(logits, label)[0]
        assert_close(grad, [central_difference(f, logits, (i,)) for i in range(len(logits))],
                     "d loss / d logits")
        assert loss == pytest.approx(-np.log(np.exp(logits[label]) / np.exp(logits).sum()))


# ---- int mode: a whole training step by hand --------------------------------------------

def tiny_network():
    """A 1-channel 2x2 conv on a 3x3 map, ReLU, and a 4->2 fully-connected layer."""
    return Network("tiny", (1, 3, 3), [
        Conv2d("conv", 1, 1, kernel=2), ReLU("relu"), Linear("fc", 4, 2),
        SoftmaxCrossEntropy("loss")])


def tiny_masters():
    """Q4.28 masters, written as (16-bit Q4.12 weight) * 2**16 + extra master bits."""
    conv_w = np.array([[2048 * M16 + M16 // 2,       # 0.5 + half a weight LSB: a tie
                        -1024 * M16 - M16 // 2],     # -0.25 - half an LSB: a tie
                       [512 * M16, 4096 * M16]])     # 0.125, 1.0
    fc_w = np.array([[4096, 0, 2048, 0],             # 1.0, 0, 0.5, 0
                     [2048, 1024, 0, 1]]) * M16      # 0.5, 0.25, 0, 2**-12
    return {"conv": (conv_w.reshape(1, 1, 2, 2), np.array([1024 * M16])),    # bias 0.25
            "fc": (fc_w.reshape(2, 1, 2, 2), np.array([0, 64 * M16]))}       # 0, 2**-6


def test_int_step_matches_hand_computation():
    # Rounding is floor(v / 2**s + 1/2) (ties toward +inf) everywhere below.
    ref = Reference(tiny_network(), mode="int", lr=3 / 65536, batch_size=1,
                    masters=tiny_masters())
    assert ref.rate_q == 3                           # lr / B as a 16-bit fraction
    # 16-bit copies: round(master / 2**16); the ties go up, also for -1024.5 -> -1024.
    np.testing.assert_array_equal(ref.weights["conv"][0].ravel(), [2049, -1024, 512, 4096])
    np.testing.assert_array_equal(ref.weights["conv"][1], [1024])

    # Inputs in Q6.10: 0.5 1 0 / 0 -0.5 0.25 / 1 0 0.5
    x = ref.quantize_input([[[0.5, 1.0, 0.0], [0.0, -0.5, 0.25], [1.0, 0.0, 0.5]]])
    np.testing.assert_array_equal(x, [[[512, 1024, 0], [0, -512, 256], [1024, 0, 512]]])

    # FP conv: sums with 10 + 12 fraction bits, plus bias 1024 * 1.0 (1024), then >> 12:
    #   (0,0): 2049*512 - 1024*1024 + 512*0 + 4096*-512 + 1024*1024 = -1048064 -> -255.875 -> -256
    #   (0,1): 2049*1024 - 1024*0 + 512*-512 + 4096*256 + 1048576  =  3933184 ->  960.25  ->  960
    #   (1,0): 2049*0 - 1024*-512 + 512*1024 + 4096*0 + 1048576    =  2097152 ->  512     ->  512
    #   (1,1): 2049*-512 - 1024*256 + 512*0 + 4096*512 + 1048576   =  1834496 ->  447.875 ->  448
    logits, cache = ref.forward(x)
    np.testing.assert_array_equal(cache[1], [[[-256, 960], [512, 448]]])
    np.testing.assert_array_equal(cache[2], [[[0, 960], [512, 448]]])          # ReLU
    # FC: z0 = 2048*512 >> 12 = 256; z1 = (1024*960 + 1*448 + 64*1024) / 4096 = 256.109 -> 256
    np.testing.assert_array_equal(logits, [256, 256])

    # Loss, label 0: equal logits give p = 1/2 exactly, 4096 in Q3.13, so e = [-4096, 4096].
    # BP into the ReLU output: sum_o W[o, j] e[o] with 12 + 13 fraction bits, >> 12:
    #   j0: 4096*-4096 + 2048*4096 -> -2048;  j1: 1024*4096 -> 1024;  j2: 2048*-4096 -> -2048;
    #   j3: 1*4096 -> 1.  The ReLU derivative (a > 0) zeroes j0.
    errors = ref.output_errors(x, 0)
    np.testing.assert_array_equal(errors["fc"][:, 0, 0], [-4096, 4096])
    np.testing.assert_array_equal(errors["relu"], [[[-2048, 1024], [-2048, 1]]])
    np.testing.assert_array_equal(errors["conv"], [[[0, 1024], [-2048, 1]]])

    ref.train_batch([x], [0])
    assert (ref.samples, ref.correct, ref.batches) == (2, 2, 1)   # output_errors counted too
    # Two equal logits: 1 bit of loss each, 256 in Q8.8 (and exactly 1.0 bit in float).
    assert ref.loss_sum == 2 * 256 and ref.loss_sum_exact == pytest.approx(2.0)
    assert ref.mean_loss == 1.0
    assert ref.saturations == {"fp": 0, "bp": 0, "update": 0}

    # WU, 10 + 13 fraction bits; the step is round(3 * g / 2**11) master LSBs.
    #   fc:   g = e[o] * a = -+4096 * [0, 960, 512, 448]  -> steps -+[0, 5760, 3072, 2688]
    #         bias g = e * 1024 = -+4194304               -> steps -+6144
    #   conv: g[ky,kx] = sum e[y,x] x[y+ky,x+kx]
    #         = [1048064, 1048832, -2621440, 262656]  -> 1535.25, 1536.375, -3840, 384.75
    #                                                 -> 1535, 1536, -3840, 385
    #         bias g = (1024 - 2048 + 1) * 1024 = -1047552 -> -1534.5 -> -1534 (tie up)
    conv_w, conv_b = ref.params["conv"]
    np.testing.assert_array_equal(conv_w.ravel(), [
        2048 * M16 + M16 // 2 - 1535, -1024 * M16 - M16 // 2 - 1536,
        512 * M16 + 3840, 4096 * M16 - 385])
    np.testing.assert_array_equal(conv_b, [1024 * M16 + 1534])
    fc_w, fc_b = ref.params["fc"]
    np.testing.assert_array_equal(fc_w.reshape(2, 4), [
        [4096 * M16, 5760, 2048 * M16 + 3072, 2688],
        [2048 * M16, 1024 * M16 - 5760, -3072, 1 * M16 - 2688]])
    np.testing.assert_array_equal(fc_b, [6144, 64 * M16 - 6144])
    # The updates are far below a 16-bit weight LSB, so most copies keep their value, but
    # the masters hold them (Gupta et al.); the two former ties move to the other side.
    np.testing.assert_array_equal(ref.weights["conv"][0].ravel(), [2048, -1025, 512, 4096])
    np.testing.assert_array_equal(ref.weights["fc"][0].reshape(2, 4),
                                  [[4096, 0, 2048, 0], [2048, 1024, 0, 1]])
    np.testing.assert_array_equal(ref.weights["fc"][1], [0, 64])


def test_sgd_step_by_hand_without_momentum():
    # update_shift = (10 + 13) + 16 - 28 = 11: step = round(g * rate_q / 2048), ties up.
    assert N.update_shift == 11
    master = np.full(5, 100)
    grad = np.array([683, -683, 1024, -1024, 0])
    # * 3 / 2048: 1.0005 -> 1, -1.0005 -> -1, 1.5 -> 2, -1.5 -> -1, 0
    master2, velocity, saturated = sgd_step_np(master, np.zeros(5, np.int64), grad, N, 3, 0)
    np.testing.assert_array_equal(master2, [99, 101, 98, 101, 100])
    np.testing.assert_array_equal(velocity, 0)
    assert saturated == 0


def test_sgd_step_by_hand_with_momentum():
    master = np.full(5, 100)
    velocity = np.array([10, -10, 11, -11, 3])
    grad = np.array([683, -683, 1024, -1024, 0])
    # momentum 0.5 (32768 / 2**16): v * 0.5 rounded = 5, -5, 5.5 -> 6, -5.5 -> -5, 1.5 -> 2;
    # plus the steps 1, -1, 2, -1, 0.
    master2, velocity2, saturated = sgd_step_np(master, velocity, grad, N, 3, 32768)
    np.testing.assert_array_equal(velocity2, [6, -6, 8, -6, 2])
    np.testing.assert_array_equal(master2, [94, 106, 92, 106, 98])
    assert saturated == 0


def test_sgd_step_saturates_gradient_velocity_and_master():
    g = N.grad
    # The gradient clamps to 32 bits before scaling: 2**40 acts as 2**31 - 1.
    master, _, saturated = sgd_step_np(np.array([0]), np.array([0]), np.array([1 << 40]), N,
                                       1 << 11, 0)
    assert saturated == 1 and master[0] == -g.max     # step = round((2**31 - 1) * 2**11 / 2**11)
    # A master at the top that steps further up clamps instead of wrapping to negative.
    master, _, saturated = sgd_step_np(np.array([N.master.max - 1, N.master.min + 1]),
                                       np.zeros(2, np.int64), np.array([-4096, 4096]), N,
                                       1 << 11, 0)
    np.testing.assert_array_equal(master, [N.master.max, N.master.min])
    assert saturated == 2
    # A velocity that overflows the master format clamps too.
    _, velocity, saturated = sgd_step_np(np.array([0]), np.array([N.master.max]),
                                         np.array([1 << 30]), N, 1 << 15, 65535)
    assert velocity[0] == N.master.max and saturated == 1


# ---- int mode: saturation, agreement with float, the hardware loss ----------------------

def test_int_mode_saturates_and_counts_and_never_wraps():
    network = Network("hot", (1, 2, 2), [Linear("fc1", 4, 4), Linear("fc2", 4, 2),
                                         SoftmaxCrossEntropy("loss")])
    top = N.weight.max * M16                          # 32767 in the 16-bit copy
    masters = {"fc1": (np.full((4, 1, 2, 2), top), np.zeros(4, np.int64)),
               "fc2": (np.stack([np.full((1, 2, 2), top), np.full((1, 2, 2), -top)]),
                       np.zeros(2, np.int64))}
    ref = Reference(network, mode="int", batch_size=1, lr=1e-3, masters=masters)
    x = np.full((1, 2, 2), N.act.max)                 # 31.999 everywhere
    logits, cache = ref.forward(x)
    # fc1: 4 * 32767 * 32767 / 2**12 = 1.05e6 >> 32767 -> all four clamp to the maximum.
    np.testing.assert_array_equal(cache[1].ravel(), [N.act.max] * 4)
    # fc2: +- the same sum -> the two ends of the range, not a wrapped value.
    np.testing.assert_array_equal(logits, [N.act.max, N.act.min])
    assert ref.saturations["fp"] == 6
    # Loss with label 1: p = [1, 0], so e = [8192, -8192] (+-1.0 in Q3.13). BP to fc1's
    # output: 32767 * 8192 + -32767 * -8192 >> 12 = 131068, clamped to 32767 four times.
    errors = ref.output_errors(x, 1)
    np.testing.assert_array_equal(errors["fc2"][:, 0, 0], [8192, -8192])
    np.testing.assert_array_equal(errors["fc1"].ravel(), [N.error.max] * 4)
    assert ref.saturations == {"fp": 12, "bp": 4, "update": 0}


@pytest.mark.parametrize("seed", range(4))
def test_int_and_float_forward_agree_within_quantization_error(seed):
    """With masters on the 16-bit weight grid and inputs on the activation grid, the two
    modes differ only by the FP requantizations, each at most half an activation LSB.
    That error grows through a weighted layer by at most the largest row sum of |W|."""
    network = digits_cnn()
    rng = np.random.default_rng(seed)
    masters = {name: (np.round(w / M16).astype(np.int64) * M16,
                      np.round(rng.uniform(-0.2, 0.2, b.shape) * N.weight.one) * M16)
               for name, (w, b) in init_masters(network, N, seed=seed).items()}
    int_ref = Reference(network, mode="int", masters=masters)
    float_ref = Reference(network, mode="float", masters=masters)
    half_lsb = 0.5 / N.act.one
    bound = 0.0
    for index in (0, 3):
        w = float_ref.weights[network.layers[index].name][0]
        bound = bound * np.abs(w).reshape(len(w), -1).sum(axis=1).max() + half_lsb
    for _ in range(10):
        x = int_ref.quantize_input(rng.uniform(0, 1, (1, 8, 8)))
        int_logits, _ = int_ref.forward(x)
        float_logits, _ = float_ref.forward(N.act.to_float(x))
        difference = np.abs(N.act.to_float(int_logits) - float_logits).max()
        assert difference <= bound, (difference, bound)
    assert int_ref.saturations["fp"] == 0


def test_softmax_error_by_hand():
    # Logits 0 and -1.0 (Q6.10 -1024). t1 = round(-1024 * LOG2E_Q / 2**14) = -1477, i.e.
    # -2 + 571/1024; the table index is 571 >> 2 = 142 and the shift 2:
    # e = [32768, 48131 >> 2 = 12032]; p = round(e * 8192 / 44800) = [5992, 2200].
    assert LOG2E_Q == 23637 and EXP2_LUT[0] == 32768 and EXP2_LUT[142] == 48131
    error, predicted = softmax_error_np(np.array([0, -1024]), 0, N)
    np.testing.assert_array_equal(error, [5992 - 8192, 2200])
    assert predicted == 0
    # Equal logits: exactly 1/4 each.
    error, predicted = softmax_error_np(np.array([300, 300, 300, 300]), 2, N)
    np.testing.assert_array_equal(error, [2048, 2048, 2048 - 8192, 2048])
    assert predicted == 0                             # the first of the largest


def test_softmax_error_close_to_float_softmax():
    """The base-2 table with a truncated 8-bit index is off by at most ~0.3% of p, about
    5 LSBs of Q3.13 at worst (measured 5.3 over 20000 vectors); allow 8."""
    rng = np.random.default_rng(11)
    worst = 0.0
    for _ in range(2000):
        classes = int(rng.integers(2, 11))
        logits = N.act.from_float(rng.normal(0, rng.choice([0.3, 2.0, 6.0]), classes))
        label = int(rng.integers(classes))
        error, predicted = softmax_error_np(logits, label, N)
        _, exact = softmax_cross_entropy(N.act.to_float(logits), label)
        worst = max(worst, np.abs(error - exact * N.error.one).max())
        assert predicted == int(np.argmax(logits))
    assert worst <= 8, worst


def test_loss_sum_counts_the_hardware_loss_and_saturates():
    """Int mode sums :func:`cross_entropy_np` of every sample's logits exactly as the
    gateware's saturating 32-bit counter does; float mode sums the exact loss in bits."""
    network = digits_cnn()
    rng = np.random.default_rng(5)
    masters = init_masters(network, N, seed=5)
    xs = rng.uniform(0, 1, size=(8, 1, 8, 8))
    labels = rng.integers(10, size=8)
    ref = Reference(network, mode="int", batch_size=4, masters=masters)
    fl = Reference(network, mode="float", batch_size=4, masters=masters)
    expect, exact = 0, 0.0
    for start in (0, 4):
        batch = [ref.quantize_input(x) for x in xs[start:start + 4]]
        for x, label in zip(batch, labels[start:start + 4]):
            logits, _ = ref.forward(x)
            expect += cross_entropy_np(logits, int(label), N)
            exact += softmax_cross_entropy(N.act.to_float(logits), int(label))[0] / np.log(2)
        ref.train_batch(batch, labels[start:start + 4])
        fl.train_batch([fl.quantize_input(x) for x in xs[start:start + 4]],
                       labels[start:start + 4])
    assert isinstance(ref.loss_sum, int) and ref.loss_sum == expect
    assert ref.loss_sum_exact == pytest.approx(exact)
    assert abs(ref.mean_loss - ref.loss_sum_exact / 8) < 2 / 256       # Q8.8, 2 LSBs
    assert fl.loss_sum == pytest.approx(fl.loss_sum_exact) and fl.mean_loss > 0
    assert abs(fl.mean_loss - ref.mean_loss) < 0.1 * fl.mean_loss      # same training
    ref.loss_sum = (1 << 32) - 10
    ref.output_errors(ref.quantize_input(xs[0]), 0)
    assert ref.loss_sum == (1 << 32) - 1


def test_maxpool_picks_first_of_tied_maxima():
    a = np.array([[[5, 5, 1, 2],
                   [5, 5, 2, 2],
                   [0, 3, 7, 1],
                   [3, 0, 1, 7]]])
    pooled, winner = maxpool_forward(a)
    np.testing.assert_array_equal(pooled, [[[5, 2], [3, 7]]])
    np.testing.assert_array_equal(winner, [[[0, 1], [1, 0]]])     # index = 2*dy + dx
    routed = maxpool_backward(np.array([[[10, 20], [30, 40]]]), winner)
    np.testing.assert_array_equal(routed, [[[10, 0, 0, 20],
                                            [0, 0, 0, 0],
                                            [0, 30, 40, 0],
                                            [0, 0, 0, 0]]])


def test_int_reference_routes_error_to_first_tied_maximum():
    # An identity 1x1 conv in front of the pool, so that BP reaches the pool's input.
    network = Network("tie", (1, 2, 2), [Conv2d("probe", 1, 1, kernel=1), MaxPool2d("pool"),
                                         Linear("fc", 1, 2), SoftmaxCrossEntropy("loss")])
    masters = {"probe": (np.array([[[[N.weight.one * M16]]]]), np.zeros(1, np.int64)),
               "fc": (np.array([4096, -4096]).reshape(2, 1, 1, 1) * M16,
                      np.zeros(2, np.int64))}
    ref = Reference(network, mode="int", batch_size=1, masters=masters)
    x = np.array([[[3, 700], [700, 700]]])
    _, cache = ref.forward(x)
    assert cache[2][0, 0, 0] == 1 and cache[3][0, 0, 0] == 700     # winner (0, 1)
    errors = ref.output_errors(x, 0)
    e = errors["pool"][0, 0, 0]
    assert e != 0
    np.testing.assert_array_equal(errors["probe"], [[[0, e], [0, 0]]])


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["double", "", None, "INT"])
def test_unknown_mode_is_refused_by_name(mode):
    with pytest.raises(FpdeepError, match=f"mode.*{mode!r}"):
        Reference(digits_cnn(), mode=mode)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "8"])
def test_bad_batch_size_is_refused_by_name(batch_size):
    with pytest.raises(FpdeepError, match=f"batch size.*{batch_size!r}"):
        Reference(digits_cnn(), batch_size=batch_size)


def test_wrong_number_of_samples_in_a_batch_is_refused():
    ref = Reference(digits_cnn(), batch_size=4)
    x = ref.quantize_input(np.zeros((1, 8, 8)))
    with pytest.raises(FpdeepError, match="4 samples, not 3"):
        ref.train_batch([x] * 3, [0] * 3)


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_bad_momentum_is_refused(momentum):
    with pytest.raises(FpdeepError, match="momentum"):
        Reference(digits_cnn(), momentum=momentum)
