"""Gate groups: the optimizer's gate param groups as handles, and freezing as explicit, checkpointed state."""

import pytest
import torch

from sss_lightning.gate_groups import build_param_groups, freeze_all, gate_groups, is_frozen, structure_fixed
from sss_lightning.gates import iter_gates
from sss_lightning.models import build_model
from sss_lightning.optim import APG

GATES = {"gamma": 0.1, "weight_decay": 0.0, "mode": "apg", "nonnegative": True}
WEIGHTS = {"weight_decay": 1e-4, "gamma": 0.0}


def net():
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=4, gates="both", width=4)


def step(model, optimizer):
    optimizer.zero_grad()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()


def test_the_groups_hold_every_weight_once_and_name_their_gates():
    model = net()
    groups = build_param_groups(model, weights=WEIGHTS, gates=GATES)
    assert [g["name"] for g in groups] == ["weights", "gates"]
    held = [id(p) for g in groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters()) and len(held) == len(set(held))
    assert groups[1]["gates"] == [info.name for info in iter_gates(model)]
    by_gate = {i.name: 0.5 for i in iter_gates(model)}
    per_gate = build_param_groups(model, weights=WEIGHTS, gates=GATES, gamma_by_gate=by_gate)
    assert [g["name"] for g in per_gate[1:]] == [f"gates:{i.name}" for i in iter_gates(model)]
    assert all(g["gamma"] == 0.5 for g in per_gate[1:])
    assert build_param_groups(model, weights=WEIGHTS, gates=None)[0]["params"] == [
        p for p in model.parameters() if id(p) not in {id(i.module.scale) for i in iter_gates(model)}
    ]


def test_a_frozen_group_is_not_updated_even_with_gradients_and_its_gates_stop_taking_them():
    model = net()
    optimizer = APG(build_param_groups(model, weights=WEIGHTS, gates=GATES), lr=0.1, momentum=0.9)
    step(model, optimizer)
    (handle,) = gate_groups(optimizer, model)
    handle.freeze()
    assert handle.frozen and all(is_frozen(i.module) for i in iter_gates(model)) and structure_fixed(model)
    gates = [i.module.scale for i in iter_gates(model)]
    before = [p.detach().clone() for p in gates]
    for p in gates:  # a gradient that reaches them anyway is ignored: they left the optimizer
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, gates, strict=True))
    assert not any(p.requires_grad for p in gates)
    assert handle.params == [] and handle.gate_names == [i.name for i in iter_gates(model)]
    assert not any(id(p) in {id(q) for q in gates} for p in optimizer.state)  # their momentum went with them


def test_the_frozen_state_survives_the_optimizer_state_dict_and_a_rebuilt_optimizer():
    model = net()
    optimizer = APG(build_param_groups(model, weights=WEIGHTS, gates=GATES), lr=0.1, momentum=0.9)
    step(model, optimizer)
    freeze_all(optimizer, model)
    saved = optimizer.state_dict()
    rebuilt = APG(build_param_groups(model, weights=WEIGHTS, gates=GATES), lr=0.1, momentum=0.9)
    assert [g.frozen for g in gate_groups(rebuilt)] == [True]  # built from the gates' own flags
    rebuilt.load_state_dict(saved)  # the same groups: loads
    assert [g.frozen for g in gate_groups(rebuilt)] == [True]


def test_gates_the_user_took_out_of_autograd_stay_out_of_the_optimizer():
    model = net()
    first = next(iter_gates(model))
    first.module.scale.requires_grad_(False)
    groups = build_param_groups(model, weights=WEIGHTS, gates=GATES)
    assert first.name not in groups[1]["gates"] and not groups[1]["frozen"]
    assert all(p is not first.module.scale for g in groups for p in g["params"])


def test_handles_read_and_set_gamma_and_ask_the_optimizer_for_its_threshold():
    model = net()
    optimizer = APG(build_param_groups(model, weights=WEIGHTS, gates=GATES), lr=0.2, momentum=0.9)
    (handle,) = gate_groups(optimizer)
    handle.gamma = 0.3
    assert optimizer.param_groups[1]["gamma"] == 0.3
    assert handle.threshold() == pytest.approx(0.2 * 0.3) == optimizer.threshold(1)
    assert handle.l1_drift(10) == pytest.approx(optimizer.l1_drift(1, 10))
    with pytest.raises(ValueError, match=r"gates: gamma must be >= 0, got -1"):
        handle.gamma = -1
    with pytest.raises(ValueError, match=r"zero_hold must be an int >= 0"):
        handle.zero_hold = 1.5
