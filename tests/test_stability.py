"""Selection stability: switches between zero and non-zero are counted, and the final zeros that held over
the last steps are told apart from the ones that just flickered in."""

import pytest
import torch
from torch import nn

from sss_lightning.callbacks import GateMonitor
from sss_lightning.gates import ChannelGate
from sss_lightning.stability import ZeroSetTracker


def _gated(values: list[float]) -> nn.Sequential:
    net = nn.Sequential(ChannelGate(len(values)))
    with torch.no_grad():
        net[0].scale.copy_(torch.tensor(values))
    return net


def _set(net: nn.Module, values: list[float]) -> None:
    with torch.no_grad():
        net[0].scale.data = torch.tensor(values)


def test_flips_and_stable_fraction():
    net, tracker = _gated([1.0, 1.0, 1.0, 1.0]), ZeroSetTracker()
    history = [
        [0.0, 1.0, 1.0, 1.0],  # step 1: entry 0 dies
        [0.0, 0.0, 1.0, 1.0],  # step 2: entry 1 dies
        [0.0, 1.0, 1.0, 1.0],  # step 3: entry 1 revives
        [0.0, 0.0, 1.0, 0.0],  # step 4: entries 1 and 3 die
    ]
    tracker.update(net, 0)
    for step, values in enumerate(history, start=1):
        _set(net, values)
        tracker.update(net, step)
    assert tracker.take_flips() == 5 and tracker.take_flips() == 0
    assert tracker.zeros() == 3
    assert tracker.stable_fraction(since_step=3) == pytest.approx(1 / 3)  # only entry 0 held since step 3
    assert tracker.stable_fraction(since_step=4) == 1.0
    assert ZeroSetTracker().stable_fraction(0) is None


def test_a_shrunk_gate_keeps_its_history_and_removed_entries_count_as_zero():
    net, tracker = _gated([1.0, 0.0, 1.0, 0.0]), ZeroSetTracker()
    tracker.update(net, 0)
    _set(net, [0.0, 1.0, 1.0, 0.0])
    tracker.update(net, 1)  # entry 0 dies, entry 1 revives
    _set(net, [1.0, 0.5])  # shrink kept entries 1 and 2 (the non-zero ones), in order
    tracker.update(net, 2)
    _set(net, [0.0, 0.5])  # original entry 1 dies
    tracker.update(net, 3)
    assert tracker.zeros() == 3
    assert tracker.stable_fraction(since_step=1) == pytest.approx(2 / 3)  # entries 0 and 3; entry 1 died at step 3
    state = tracker.state_dict()
    copy = ZeroSetTracker()
    copy.load_state_dict(state)
    assert copy.zeros() == 3 and copy.stable_fraction(1) == tracker.stable_fraction(1)


def test_a_shrink_the_tracker_cannot_map_is_an_error_that_says_why():
    net, tracker = _gated([1.0, 0.0, 1.0]), ZeroSetTracker()
    tracker.update(net, 0)
    _set(net, [1.0])
    with pytest.raises(ValueError, match="went from 3 to 1 entries, but 2 of them were non-zero"):
        tracker.update(net, 1)


@pytest.mark.slow
def test_gate_monitor_logs_churn_and_the_stable_zero_fraction(tmp_path, tiny_classifier, quiet_trainer, tiny_data):
    module = tiny_classifier(gamma=0.5, gate_rescale=True)
    monitor = GateMonitor(log_every_n_steps=2, plots=True, dirpath=str(tmp_path / "plots"))
    quiet_trainer(tmp_path, [monitor], max_epochs=3, limit_val_batches=0).fit(module, datamodule=tiny_data())
    assert [c["epoch"] for c in monitor.churn] == [0.0, 1.0, 2.0]
    assert sum(c["gates/churn"] for c in monitor.churn) >= monitor.stability["final_zeros"] > 0
    assert 0.0 <= monitor.stability["stable_zero_fraction"] <= 1.0
    assert monitor.stability["window_start_step"] == 12 - 1  # 3 epochs x 4 steps, the last 10% rounds to 1 step
    assert (tmp_path / "plots" / "churn.png").is_file()
    restored = GateMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.churn == monitor.churn and restored.tracker.zeros() == monitor.tracker.zeros()


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, True])
def test_stable_window_must_be_a_fraction(bad):
    with pytest.raises(ValueError, match="stable_window must be a fraction of the run in"):
        GateMonitor(stable_window=bad)


def test_the_shrink_index_map_places_survivors_even_when_gates_were_zeroed_since_the_last_update():
    net, tracker = _gated([1.0, 0.4, 0.3, 1.0]), ZeroSetTracker()
    tracker.update(net, 0)
    _set(net, [1.0, 0.3])  # a budget zeroed entries 1 and 3 at the epoch end, then the shrink removed them
    tracker.update(net, 1, kept={"0": torch.tensor([0, 2])})
    assert tracker.zeros() == 2 and tracker.take_flips() == 2
    assert tracker.live["0"].tolist() == [0, 2] and tracker.stable_fraction(since_step=0) == 0.0
