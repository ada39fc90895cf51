"""The GTKWave save file of a 2-chip digits run: groups per chip and link, and every
listed signal in the VCD."""

import re

import pytest

from fpdeep.scripts.cli import main


def parse_gtkw(text):
    """``[name, children, traces]`` of a save file's group tree (the root has no name)."""
    root = [None, [], []]
    stack, flags = [root], None
    for line in text.splitlines():
        if line.startswith("@"):
            flags = int(line[1:], 16)
        elif line.startswith("-"):
            if flags & 0x1000000:                    # the closing line (TR_GRP_END)
                assert stack.pop()[0] == line[1:]
            else:
                group = [line[1:], [], []]
                stack[-1][1].append(group)
                stack.append(group)
        elif line and line[0] not in "[*":
            stack[-1][2].append(line)
    assert stack == [root]
    return root


def vcd_names(text):
    """Every variable of a VCD by its full name, scopes joined with dots."""
    names, scopes = set(), []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["$scope"]:
            scopes.append(words[2])
        elif words[:1] == ["$upscope"]:
            scopes.pop()
        elif words[:1] == ["$var"]:
            names.add(".".join(scopes + [words[4]]))
        elif words[:1] == ["$enddefinitions"]:
            break
    return names


def children(group):
    return {child[0]: child for child in group[1]}


def traces(group):
    return group[2] + [name for child in group[1] for name in traces(child)]


@pytest.fixture(scope="module")
def waves(tmp_path_factory):
    vcd = tmp_path_factory.mktemp("waves") / "run.vcd"
    assert main(["waves", "--chips", "2", "--batch-size", "1", "-o", str(vcd)]) == 0
    return parse_gtkw(vcd.with_suffix(".gtkw").read_text()), vcd_names(vcd.read_text())


def test_every_listed_signal_is_in_the_vcd(waves):
    tree, names = waves
    listed = traces(tree)
    assert len(listed) > 100
    # The save file gives a wide signal's bit range, the VCD its name alone.
    missing = [name for name in listed if re.sub(r"\[\d+:\d+\]$", "", name) not in names]
    assert missing == []


def test_a_group_per_link_direction_between_the_chips(waves):
    tree, _ = waves
    assert [group[0] for group in tree[1]] == ["chip0", "link0.down", "link0.up", "chip1"]
    for direction, sender, receiver in (("down", "a", "b"), ("up", "b", "a")):
        link = children(tree)[f"link0.{direction}"]
        assert list(children(link)) == ["transmit", "receive", "replay", "credits"]
        assert list(children(children(link)["credits"])) == ["act", "err", "wgt", "ctl"]
        transmit, receive, replay = (traces(children(link)[name])
                                     for name in ("transmit", "receive", "replay"))
        assert f"bench.top.link0.{sender}.tx.send_data" in transmit
        assert any(".tx.credit3.sent" in name for name in transmit)
        assert f"bench.top.link0.{receiver}.rx.good" in receive
        assert f"bench.top.link0.{receiver}.rx.bad" in receive
        assert f"bench.top.link0.{sender}.tx.resend" in replay
        assert f"bench.top.link0.{receiver}.rx.schedule_nak" in replay


def test_the_loss_stage_is_on_the_last_chip_next_to_the_pipeline(waves):
    tree, _ = waves
    chip0, chip1 = children(tree)["chip0"], children(tree)["chip1"]
    assert "loss" not in children(chip0)
    assert list(children(chip1))[:3] == ["host", "pipeline", "loss"]
    loss = traces(children(chip1)["loss"])
    # A port takes the name of whichever module the simulator finds it in first; the
    # FSM's state is internal to the sequencer. Then the loss unit's and the buffer's
    # output streams.
    assert loss[0] == "bench.top.chip1.sequencer.loss_state"
    assert [group[0] for group in children(chip1)["loss"][1]] == ["interface", "interface"]


def test_link_groups_follow_the_link_configuration():
    from amaranth.hdl import Fragment
    from fpdeep.rtl.link.endpoint import LinkPair
    from fpdeep.rtl.link.frame import LinkConfig
    from fpdeep.sim.waves import link_traces
    link = LinkPair(LinkConfig(vcs=5))
    Fragment.get(link, None)
    groups = link_traces(link)
    assert list(groups) == ["down", "up"]
    assert list(groups["up"]["credits"]) == ["act", "err", "wgt", "ctl", "vc4"]
