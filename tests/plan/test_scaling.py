from fpdeep.plan.scaling import balance_sweep


def test_balance_sweep():
    rows = balance_sweep(["digits", "lenet5"], max_chips=4)
    assert [r["net"] for r in rows] == ["digits", "lenet5"]
    for r in rows:
        assert r["board"] == "ulx3s-85f" and r["chips"] == 4
        assert 1.0 <= r["worst"] <= 1.05 and 1 <= r["worst_at"] <= 4 and r["misses"] == []
        # The slowest chip is never faster than a perfect split of the MACs.
        assert r["slowdown"] >= 1.0 and r["seconds"] >= 0.0
