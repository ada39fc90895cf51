"""Tests of :mod:`fpdeep.sim.train_cluster`: epochs on the simulated chips follow the
reference mode of ``fpdeep train`` exactly."""

import pytest

from fpdeep.plan.boards import Cluster, get_board
from fpdeep.plan.network import digits_cnn
from fpdeep.plan.plan import plan_network
from fpdeep.rtl.elaborate import chain_from_plan
from fpdeep.scripts.train_quality import train_side_by_side
from fpdeep.sim.train_cluster import train_cluster


@pytest.mark.slow
def test_pysim_epochs_equal_the_reference_mode_of_fpdeep_train():
    """One chip in Amaranth's simulator, 2 epochs of 4 samples (about 30 s of CPU,
    most of it building the simulation): bit-exact
    at each epoch's end, and the held-out accuracy of each epoch is the reference
    mode's for the same options."""
    network = digits_cnn()
    plan = plan_network(network, Cluster([get_board("ulx3s-85f")]), batch_size=2,
                        target="gateware")
    seen, done = [], []
    training = train_cluster(plan, chain_from_plan(plan, network), network, epochs=2,
                             lr=0.05, momentum=0.9, seed=3, train_samples=5,
                             backend="pysim", on_epoch=seen.append,
                             progress=lambda d, total: done.append((d, total)))
    assert training.mismatch is None and training.exact, training.mismatch
    assert training.final_weights[:2] == (690, 690)
    assert [e.epoch for e in training.epochs] == [1, 2] and seen == training.epochs
    assert all(e.weights == (690, 690) for e in training.epochs)
    assert done[-1] == (8, 8)       # 5 samples: a last partial batch is dropped
    assert training.result.samples == 8 and training.result.batches == 4
    reference = train_side_by_side(modes=("int",), epochs=2, lr=0.05, momentum=0.9, batch=2,
                                   seed=3, train_samples=5, network=network)["int"]
    assert [e.test_accuracy for e in training.epochs] == reference.accuracies
