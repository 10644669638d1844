"""The MACs-budget controller and the deadline's landing, without a Trainer."""

import math

import pytest
import torch

from sss_lightning.budget import GammaController, land, projection_moves, revival_moves


def test_inside_the_band_gamma_stays_and_outside_it_moves_towards_the_budget_bounded_per_step():
    c = GammaController(target=100.0, tolerance=0.04, gain=1.0, max_change=1.5)
    assert not c.update(c.set_point * 1.01) and c.scale == 1.0  # inside the dead band
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
