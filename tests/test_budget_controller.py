"""The MACs-budget controller and the deadline's landing, without a Trainer."""

import math

import pytest
import torch

from sss_lightning.budget import GammaController, land, projection_moves, revival_moves


def test_inside_the_band_gamma_stays_and_outside_it_moves_towards_the_budget_bounded_per_step():
    c = GammaController(target=100.0, tolerance=0.04, gain=1.0, max_change=1.5)
    assert not c.update(c.set_point() * 1.01) and c.scale == 1.0  # inside the dead band
    assert c.update(150.0) and 1.0 < c.scale <= 1.5  # too expensive: more L1
    scale = c.scale
    assert c.update(10.0) and c.scale == pytest.approx(scale / 1.5)  # far too cheap: the largest step down
    c2 = GammaController(target=100.0, tolerance=0.04)
    c2.load_state_dict(c.state_dict())
    assert c2.scale == c.scale


def test_in_closed_loop_on_a_network_whose_macs_fall_with_gamma_it_settles_within_the_tolerance():
    # a plant: the MACs the network heads for fall exponentially with the L1 strength
    c = GammaController(target=0.4, tolerance=0.03)
    plant = lambda scale: math.exp(-0.7 * scale)  # noqa: E731
    for _ in range(60):
        c.update(plant(c.scale))
    assert c.within(plant(c.scale))


def test_the_glide_path_runs_geometrically_from_the_unpruned_macs_to_the_budget_and_stays_there():
    c = GammaController(target=0.25, tolerance=0.04, start=1.0, glide=0.5)
    end = 0.25 * 1.02  # the upper half of the band
    assert c.set_point(0.0) == pytest.approx(1.0)
    assert c.set_point(0.25) == pytest.approx(math.sqrt(end))  # half-way in log MACs
    assert c.set_point(0.5) == c.set_point(0.9) == c.set_point(1.0) == pytest.approx(end)
    assert GammaController(target=0.25, tolerance=0.04, start=1.0, glide=0.0).set_point(0.0) == pytest.approx(end)


def _lagged_run(glide: float, steps: int = 100) -> tuple[float, float]:
    """A plant with the two things real gates do: they answer gamma with a lag, and zeros come back ten
    times more slowly than they come (a zero gate under APG rarely revives). Returns (lowest, final) MACs."""
    c = GammaController(target=0.4, tolerance=0.03, start=1.0, glide=glide)
    macs = lowest = 1.0
    for i in range(steps):
        heading = math.exp(-0.7 * c.scale)  # where the gates head at this gamma
        macs += (heading - macs) / (5 if heading < macs else 50)
        lowest = min(lowest, macs)
        c.update(macs, progress=i / (0.75 * steps))  # the deadline three quarters into the run
    return lowest, macs


def test_with_lagging_gates_a_glide_path_lands_without_the_undershoot_of_aiming_at_the_budget_at_once():
    lowest, final = _lagged_run(glide=0.0)
    assert lowest < 0.4 * 0.9  # gamma winds up before the gates answer, then they fall far below the budget
    lowest, final = _lagged_run(glide=0.5)
    assert lowest >= 0.4 * (1 - 0.03) and 0.4 * (1 - 0.03) <= final <= 0.4 * (1 + 0.03)


def test_a_glide_outside_0_to_1_is_refused_with_what_it_means():
    with pytest.raises(ValueError, match="glide must be the fraction of the run"):
        GammaController(target=0.4, tolerance=0.03, glide=1.5)


@pytest.mark.parametrize("wanted", [0.3, 0.5, 0.7])
def test_projection_zeroes_the_fewest_smallest_gates_that_bring_the_cost_into_the_band(wanted):
    torch.manual_seed(0)
    gates = [torch.rand(10) + 0.01, torch.rand(6) + 0.01]
    values = torch.cat(gates).tolist()
    cost = [1.0] * 10 + [2.0] * 6  # a second layer whose channels cost twice as much

    def share(alive: list[bool]) -> float:
        return sum(c for c, a in zip(cost, alive, strict=True) if a) / sum(cost)

    def measure() -> float:
        return share([v != 0 for v in torch.cat(gates).tolist()])

    n = land(gates, projection_moves(gates), measure, wanted - 0.05, wanted + 0.05, cheaper=True)
    assert wanted - 0.05 <= measure() <= wanted + 0.05
    order = sorted(range(len(values)), key=lambda i: values[i])
    after = torch.cat(gates).tolist()
    assert {i for i, v in enumerate(after) if v == 0} == set(order[:n])  # the n smallest, nothing else
    assert all(after[i] == values[i] for i in order[n:])  # survivors keep their values
    assert share([i not in order[: n - 1] for i in range(len(values))]) > wanted + 0.05  # one fewer is not enough


def test_revival_gives_back_the_largest_last_values_first():
    gates = [torch.tensor([0.0, 0.5, 0.0, 0.0])]
    last = [torch.tensor([0.9, 0.5, 0.1, 0.0])]  # the last entry was never alive: it cannot come back
    moves = revival_moves(gates, last)
    assert [(i, v) for _, i, v in moves] == [(0, pytest.approx(0.9)), (2, pytest.approx(0.1))]
    measure = lambda: float((gates[0] != 0).sum()) / 4  # noqa: E731
    assert land(gates, moves, measure, 0.5, 0.5, cheaper=False) == 1
    assert gates[0].tolist() == pytest.approx([0.9, 0.5, 0.0, 0.0])
