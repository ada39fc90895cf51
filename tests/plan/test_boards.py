import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.boards import BOARDS, Cluster, get_board


def test_facts_figures():
    assert get_board("ulx3s-85f").multipliers == 156
    assert get_board("ulx3s-85f").bram_bits == 208 * 18 * 1024
    assert get_board("ulx3s-45f").multipliers == 72
    assert get_board("ulx3s-25f").luts == 24_288
    assert get_board("icebreaker").multipliers == 8
    vc709 = get_board("vc709")
    assert (vc709.multipliers, vc709.luts, vc709.bram_bits) == (3600, 433_200, 1470 * 36 * 1024)
    assert get_board("vu9p").multipliers == 6840
    assert set(BOARDS) >= {"ulx3s-85f", "ulx3s-45f", "ulx3s-25f", "orangecrab", "ecpix5",
                           "icebreaker", "vc709", "vu9p"}


def test_link_split_between_neighbours():
    vc709 = get_board("vc709")
    assert vc709.total_gbps == 60 and vc709.link_gbps == 30
    cluster = Cluster.uniform("vc709", 3, link_gbps=250)
    assert cluster.link_bps(0) == pytest.approx(125e9)


def test_mixed_cluster_and_round_trip():
    cluster = Cluster([get_board("ulx3s-85f"), get_board("ulx3s-45f")])
    assert cluster.link_bps(0) == pytest.approx(0.4e9)
    again = Cluster.from_dict(cluster.to_dict())
    assert [b.name for b in again.boards] == ["ulx3s-85f", "ulx3s-45f"]


def test_errors():
    with pytest.raises(FpdeepError, match="unknown board 'nope'"):
        get_board("nope")
    with pytest.raises(FpdeepError, match="positive integer"):
        Cluster.uniform("vc709", 0)


def test_link_ber_round_trip_and_refusals():
    cluster = Cluster.uniform("vc709", 2, link_ber=1e-4)
    assert Cluster.from_dict(cluster.to_dict()).link_ber == 1e-4
    spec = cluster.to_dict()
    del spec["link_ber"]            # a plan written before the BER was recorded
    assert Cluster.from_dict(spec).link_ber == 0.0
    for bad in (-1e-9, 1.0, 2, float("nan"), float("inf"), True, "0"):
        with pytest.raises(FpdeepError, match=r"bit-error rate must be a number in \[0, 1\)"):
            Cluster.uniform("vc709", 2, link_ber=bad)
