"""swap/evidence.py: each figure from the canary, the strategy's own evidence and the
independent checkers; unknown (None, with the reason) whenever something unmeasured
could hide a loss; exit 0 only when everything is measured and 0."""

from __future__ import annotations

from swapctl.swap.evidence import EXIT_FAILED, EXIT_OK, Evidence, exit_code, figures

CLEAN_CANARY = {"lost": 0, "duplicated": 0, "reordered": 0, "corrupted": 0,
                "disconnects": 0, "dead": 0}


def test_a_clean_move_with_a_canary_is_proven() -> None:
    figs = figures(Evidence(), CLEAN_CANARY)
    assert {n: f.value for n, f in figs.items()} == dict.fromkeys(figs, 0)
    assert exit_code("committed", figs) == EXIT_OK


def test_a_relay_frozen_busy_makes_lost_and_corrupted_unknown() -> None:
    """A takeover that never found the old relay idle: a frame it had read and not
    written died unseen. The canary's 0 covers its own messages only (a CI run lost 6
    load messages while the canary lost none): the figures must not say 0."""
    ev = Evidence(busy_at_cutover="the legacy relay was frozen busy (not idle in 20 tries)")
    figs = figures(ev, CLEAN_CANARY)
    assert figs["lost"].value is None and figs["corrupted"].value is None
    assert figs["lost"].unknown_because == ev.busy_at_cutover
    assert figs["disconnects"].value == 0  # every connection still moved
    assert exit_code("committed", figs) == EXIT_FAILED
    checked = figures(ev, CLEAN_CANARY, {"load": {"lost": 6, "corrupted": 0}})
    assert checked["lost"].value is None
    assert "at least 6 seen by the checkers" in str(checked["lost"].unknown_because)
    assert ev.to_dict()["busy_at_cutover"] == ev.busy_at_cutover
    assert Evidence().to_dict()["busy_at_cutover"] is None


def test_a_consumer_left_mid_frame_names_that_cause_for_corrupted() -> None:
    ev = Evidence(torn_consumers=1, busy_at_cutover="frozen busy")
    figs = figures(ev, CLEAN_CANARY)
    assert "mid-frame" in str(figs["corrupted"].unknown_because)
    assert figs["lost"].unknown_because == "frozen busy"


def test_cut_clients_that_did_not_come_back_are_dead() -> None:
    ev = Evidence(cut=5, cut_by="restart", reconnected=4, reconnect_window_s=2.0)
    figs = figures(ev, {**CLEAN_CANARY, "disconnects": 3, "dead": 1},
                   {"load": {"dead_consumers": 1, "disconnects": 5}})
    assert figs["disconnects"].value == 3 + 5
    assert figs["dead_consumers"].value == 1 + 1
    assert figs["lost"].value is None  # what cut clients missed is not measured
    assert exit_code("committed", figs) == EXIT_FAILED
