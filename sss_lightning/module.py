"""SSSModule: the LightningModule that trains a gated network with one two-group APG optimizer.

Weights go in one group (weight decay, ``gamma=0``: exactly Nesterov SGD), gates in the other (L1
``gamma`` by proximal steps, no weight decay, non-negative as in the official code). Add an architecture
by passing ``net=`` or by subclassing and overriding :meth:`SSSModule.build_network`.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from .flops import structure_costs
from .gates import gate_parameters, has_gates, iter_gates, sparsity
from .io import apply_spec, architecture_spec, rebuild_problem
from .models.registry import build_model, import_path, resolve_import_path
from .optim import APG, validate_hparams
from .rescale import gate_pairs, rescale_gates
from .shrink import carry_optimizer_state, carry_scheduler_state, rewrap_distributed, slice_sources

__all__ = ["SSSModule", "SSSClassifier", "load_sss_checkpoint"]

Schedule = Literal["cosine", "step", "constant"]


def classification_step(
    module: L.LightningModule, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy
) -> Tensor:
    """Cross-entropy and accuracy of one batch through ``module`` (which has a ``criterion``), logged as
    ``<stage>/loss`` and ``<stage>/acc``: per step and epoch in training, per epoch (synced) otherwise."""
    x, y = batch
    logits = module(x)
    loss = module.criterion(logits, y)
    metric(logits, y)
    on_step = stage == "train"
    module.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step)
    module.log(f"{stage}/acc", metric, on_step=on_step, on_epoch=True, prog_bar=True)
    return loss


def _infer_num_classes(net: nn.Module) -> int | None:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


class SSSModule(L.LightningModule):
    """Image classification with Sparse Structure Selection.

    Args:
        net: the gated network; ``None`` means :meth:`build_network` builds it (subclass hook).
        num_classes: classes of the accuracy metric; inferred from the network's last ``nn.Linear``.
        lr, momentum, weight_decay: the weights' Nesterov SGD (paper: 0.1, 0.9, 1e-4).
        gamma: L1 strength on the gates; larger gives more zeros and fewer FLOPs.
        gate_lr: learning rate of the gates (default: ``lr``); the schedule scales both groups.
        gate_mode: ``"apg"`` (the paper), ``"ista"`` or ``"sgd"`` (L1 subgradient baseline).
        gate_nonnegative: clamp gates at 0 after each step; default True for apg/ista, False for sgd.
        schedule: ``"cosine"`` (per step over the whole run), ``"step"`` (x ``lr_decay`` at the epochs in
            ``milestones``) or ``"constant"``.
        cost_weighted: weigh each gate's L1 strength by the MACs one of its structures costs,
            ``gamma_g = gamma * cost_g / mean cost`` (mean over all structures), so the same gamma removes
            expensive structures first; costs are measured once with surgery (:func:`structure_costs`).
        input_size: ``(C, H, W)`` of one input: needed by ``cost_weighted``, and recorded for FLOPs reports.
        freeze_gates: keep every gate at its initial 1.0, outside the optimizer: the network trains as the
            plain one does (the baselines' training phase, or an unpruned reference on the same code).
        gate_rescale: after every step, divide each layer's channel/group gates by their largest value and
            multiply the consuming conv/linear by it (:func:`~sss_lightning.rescale.rescale_gates`; the
            function is unchanged), so the L1 threshold acts relative to the layer's largest gate.
        zero_hold: pin a gate at 0 once it has been exactly 0 for this many consecutive steps (0: never).
        gate_momentum_units: where the gates' APG velocity lives, ``"gradient"`` or ``"parameter"`` (the
            official APGNAG); see :mod:`sss_lightning.optim`.
        settle_at: after this fraction of the training steps, freeze every gate (the zero set is then the
            selection and the rest of the run trains the weights of that structure, without the L1 pull;
            add :class:`~sss_lightning.callbacks.InTrainingShrink` to train it at its smaller size). A
            callback that fixes the structure itself (``MacsBudget``) takes over by setting ``settled_by``.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        num_classes: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        gamma: float = 0.01,
        gate_lr: float | None = None,
        gate_mode: Literal["apg", "ista", "sgd"] = "apg",
        gate_nonnegative: bool | None = None,
        schedule: Schedule = "cosine",
        milestones: Sequence[int] = (120, 160, 240),
        lr_decay: float = 0.1,
        cost_weighted: bool = False,
        input_size: Sequence[int] | None = None,
        freeze_gates: bool = False,
        gate_rescale: bool = True,
        zero_hold: int = 100,
        gate_momentum_units: Literal["gradient", "parameter"] = "gradient",
        settle_at: float | None = 0.75,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if input_size is not None:
            if len(input_size) != 3 or any(isinstance(s, bool) or int(s) < 1 for s in input_size):
                raise ValueError(f"input_size must be (C, H, W) with positive sizes, got {input_size!r}")
            self.example_input_array = torch.zeros(1, *input_size)
        if cost_weighted and input_size is None:
            raise ValueError(
                "cost_weighted=True weighs each gate's L1 penalty by the MACs of its structure, which needs "
                "the input size: pass input_size=[C, H, W] (e.g. [1, 28, 28] for Fashion-MNIST)"
            )
        self._gate_weights: dict[str, float] | None = None
        if gate_nonnegative is None:
            gate_nonnegative = gate_mode != "sgd"
        validate_hparams(
            lr=lr,
            momentum=momentum,
            gamma=0.0,
            weight_decay=weight_decay,
            mode="apg",
            nonnegative=False,
            where=" (weights)",
        )
        validate_hparams(
            lr=lr if gate_lr is None else gate_lr,
            momentum=momentum,
            gamma=gamma,
            weight_decay=0.0,
            mode=gate_mode,
            nonnegative=gate_nonnegative,
            momentum_units=gate_momentum_units,
            zero_hold=zero_hold,
            where=" (gates)",
        )
        if not isinstance(gate_rescale, bool):
            raise ValueError(f"gate_rescale must be a bool, got {gate_rescale!r}")
        if settle_at is not None and (
            isinstance(settle_at, bool) or not isinstance(settle_at, (int, float)) or not 0 < settle_at <= 1
        ):
            raise ValueError(
                f"settle_at must be a fraction of the training steps in (0, 1] or None, got {settle_at!r}; e.g. 0.75 "
                "fixes the structure after three quarters of the run"
            )
        if schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {schedule!r}")
        if schedule == "step" and (not milestones or list(milestones) != sorted(milestones)):
            raise ValueError(f"milestones must be a non-empty increasing list of epochs, got {milestones!r}")
        self.gate_nonnegative = gate_nonnegative

        self.net = net if net is not None else self.build_network()
        if net is None:
            _record_built_network(self)
        if not isinstance(self.net, nn.Module):
            raise TypeError(f"the network must be an nn.Module, got {type(self.net).__name__}")
        if not has_gates(self.net):
            raise ValueError(
                f"{type(self.net).__name__} has no gates, so SSS has nothing to select. Fix: add "
                "sss_lightning.gates.ChannelGate/GroupGate/BlockGate modules to it, or build a registry "
                "model with gates='block', 'channel' or 'both'."
            )
        if freeze_gates:
            for p in gate_parameters(self.net):
                p.requires_grad_(False)
        num_classes = num_classes or _infer_num_classes(self.net)
        if not num_classes:
            raise ValueError("cannot infer num_classes (the network has no nn.Linear); pass num_classes=")
        self._finetune: dict[str, float] | None = None
        self._reshaped = False  # the network was replaced by a smaller one (shrink or surgery)
        # after shrink(): per surviving gate, the positions its entries had in the gate before the shrink
        self.shrunk_gates: dict[str, Tensor] = {}
        self.settled_by: str | None = None  # a callback that fixes the structure itself (MacsBudget)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def build_network(self) -> nn.Module:
        """Subclass hook: return the gated network when ``net`` is not passed."""
        raise TypeError(
            f"{type(self).__name__} needs a network: pass net=<nn.Module with gates>, or subclass "
            "SSSModule and override build_network()"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> Tensor:
        return classification_step(self, batch, stage, metric)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.example_input_array is None:  # one input's shape, for FLOPs counting and surgery reports
            self.example_input_array = torch.zeros_like(batch[0][:1], device="cpu")
        loss = self._shared_step(batch, "train", self.train_acc)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: the loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}. The run stops before any snapshot or surgery writes a broken model, and "
                "the last checkpoint is kept. Fix: lower lr or gamma, or set trainer.gradient_clip_val"
            )
        # only on the steps the logger writes: the sparsity summary costs a device sync
        log_now = self.trainer.global_step % self.trainer.log_every_n_steps == 0
        summary = sparsity(self.net) if log_now else {}
        if summary:  # a network already pruned (fine-tuning after surgery) has no gates left
            self.log_dict({f"sparsity/{k}": v for k, v in summary.items() if "_" not in k}, on_step=True)
            self.log("sparsity", summary["overall"], prog_bar=True, logger=False)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then a check that no gate became non-finite, before any callback (checkpoint,
        snapshot, surgery) sees the new state."""
        super().optimizer_step(*args, **kwargs)
        if self.hparams.get("gate_rescale"):
            optimizer = self.trainer.optimizers[0] if self._trainer is not None else None
            rescale_gates(gate_pairs(self.net)[0], getattr(optimizer, "optimizer", optimizer))
        scales = [p.detach().flatten() for p in gate_parameters(self.net)]
        if scales and not torch.isfinite(torch.cat(scales)).all():
            raise FloatingPointError(
                f"a gate became non-finite at epoch {self.current_epoch}, step {self.global_step}; the run stops "
                "before any snapshot or surgery writes a broken model. Fix: lower lr, gate_lr or gamma"
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        settle = self.hparams.get("settle_at")
        if settle is None or self.settled_by is not None:
            return
        trainable = [p for p in gate_parameters(self.net) if p.requires_grad]
        if trainable and self.trainer.global_step >= math.ceil(settle * self.trainer.estimated_stepping_batches):
            for p in trainable:
                p.requires_grad_(False)
            rewrap_distributed(self.trainer)  # DDP registered the gates for all-reduce; frozen, they get no grad
            rank_zero_info(
                f"SSSModule: structure settled at step {self.trainer.global_step} (settle_at={settle}): gates frozen"
            )

    def on_train_start(self) -> None:
        accumulate, batches = self.trainer.accumulate_grad_batches, self.trainer.num_training_batches
        if accumulate > batches:
            raise ValueError(
                f"accumulate_grad_batches={accumulate} is larger than an epoch ({batches} batches), so the "
                "optimizer would step only at epoch ends with partial sums. Fix: lower accumulate_grad_batches "
                f"to at most {batches}, or use more batches per epoch"
            )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what is needed to rebuild this module: its class and input shape (the network's shape
        travels in the state dict itself, see :meth:`get_extra_state`)."""
        cls = type(self)
        x = self.example_input_array
        checkpoint["sss"] = {
            "module_class": f"{cls.__module__}.{cls.__qualname__}",
            "input_shape": list(x.shape[1:]) if isinstance(x, Tensor) else None,
            "finetune": self._finetune,
            "gate_weights": self._gate_weights,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _drop_frozen_gate_groups(checkpoint)
        record = checkpoint.get("sss", {})
        shape = record.get("input_shape")
        if shape and self.example_input_array is None:
            self.example_input_array = torch.zeros(1, *shape)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and "_extra_state" not in state:  # written before the network shape was in it
            state["_extra_state"] = {"architecture": record.get("pruned_spec"), "frozen_gates": []}
        self._finetune = record.get("finetune")
        self._gate_weights = record.get("gate_weights") or self._gate_weights

    def get_extra_state(self) -> dict[str, Any]:
        """Kept in the state dict so that every way of loading it (resume, ``load_from_checkpoint``, the
        weights ddp_spawn hands back to the main process) first reshapes the network to match: the
        architecture after surgery or shrink, and which gates are frozen (outside the optimizer).

        The architecture is :func:`~sss_lightning.io.architecture_spec`, the description pruned files
        hold too, taken against the network as this module built it: loading applies it to the network
        the loading module builds, so any network resumes, registry or not, recorded or not."""
        spec = None
        if self._reshaped or not has_gates(self.net):
            built = getattr(self, "_as_built", None)
            if built is not None:
                spec = architecture_spec(self.net, base=built[0])
            elif rebuild_problem(self.net) is None:  # ``net`` was assigned directly, not by replace_network
                spec = architecture_spec(self.net)
            else:
                rank_zero_warn(
                    f"SSSModule: the network was replaced by assigning module.net, so this checkpoint cannot record "
                    f"how it differs from the network as built and will not reload into it. Fix: replace it with "
                    f"module.replace_network(net). ({rebuild_problem(self.net)})"
                )
        frozen = [info.name for info in iter_gates(self.net) if not info.module.scale.requires_grad]
        return {"architecture": spec, "frozen_gates": frozen}

    def set_extra_state(self, state: Any) -> None:
        # torch loads a module's own state before its children's, so the new network receives the weights
        if not isinstance(state, dict):
            return
        spec = state.get("architecture")
        if spec or self._reshaped:
            param = next(self.net.parameters())
            if self._reshaped:  # loaded into a module whose network was already replaced: start from the built one
                base = _materialise(self._as_built[0], param.device)
            else:
                self._remember_as_built()
                base = self.net
            net = apply_spec(spec, base=base) if spec else base
            self.net = net.to(device=param.device, dtype=param.dtype)
            self._reshaped = bool(spec)
        frozen = set(state.get("frozen_gates") or [])
        for info in iter_gates(self.net):
            info.module.scale.requires_grad_(info.name not in frozen)

    def prepare_finetune(self, lr: float, total_steps: int) -> None:
        """Called after surgery replaced ``net``: the next ``configure_optimizers`` builds a fresh optimizer
        holding only the new network's parameters (Nesterov SGD, cosine from ``lr`` over ``total_steps``)."""
        validate_hparams(
            lr=lr,
            momentum=self.hparams.momentum,
            gamma=0.0,
            weight_decay=0.0,
            mode="apg",
            nonnegative=False,
            where=" (fine-tune)",
        )
        if total_steps < 1:
            raise ValueError(f"fine-tuning needs at least one step, got total_steps={total_steps}")
        self._finetune = {"lr": float(lr), "steps": int(total_steps)}

    @property
    def reshaped(self) -> bool:
        """Whether the network was replaced by a smaller one (in-training shrink or surgery)."""
        return self._reshaped

    def replace_network(self, net: nn.Module) -> None:
        """Swap in a reshaped network (surgery or shrink); checkpoints then record its architecture."""
        if not self._reshaped:
            self._remember_as_built()
        param = next(self.net.parameters(), None)
        self.net = net if param is None else net.to(param.device)
        self._reshaped = True

    def network_as_built(self) -> nn.Module:
        """A copy of the network's structure as this module built it, before any shrink or surgery (its
        weights are zeros: for counting what the reshaping saved, not for running)."""
        built = getattr(self, "_as_built", None)
        if built is None:
            return _materialise(_skeleton(self.net), torch.device("cpu"))
        return _materialise(built[0], torch.device("cpu"))

    def _remember_as_built(self) -> None:
        """Keep the structure of the network as built (on the meta device: no memory), before it is first
        reshaped: checkpoints describe the reshaped network relative to it."""
        self._as_built = (_skeleton(self.net),)  # a tuple: not registered as a submodule

    def shrink(self) -> dict[str, int]:
        """Mid-fit, replace the network by its sliced form (zero structures removed, surviving gates kept)
        and rebuild the optimizer over the surviving parameters with their momentum, group settings and
        schedule position carried over, so training continues as if nothing changed, only faster.

        Zero structures can no longer come back. Returns parameter counts before and after; afterwards
        :attr:`shrunk_gates` maps each surviving gate to the positions its entries had before.
        """
        trainer = self.trainer
        old_optimizer = trainer.optimizers[0]
        old_scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        old_params = dict(self.net.named_parameters())
        sliced, sources = slice_sources(self.net)
        self.shrunk_gates = {info.name: sources[f"{info.name}.scale"].flatten() for info in iter_gates(sliced)}
        self.replace_network(sliced)
        rewrap_distributed(trainer)
        trainer.strategy.setup_optimizers(trainer)
        new_params = dict(self.net.named_parameters())
        carry_optimizer_state(old_optimizer, trainer.optimizers[0], old_params, new_params, sources)
        if old_scheduler is not None and trainer.lr_scheduler_configs:
            carry_scheduler_state(old_scheduler, trainer.lr_scheduler_configs[0].scheduler, old_optimizer)
        return {
            "params_before": sum(p.numel() for p in old_params.values()),
            "params_after": sum(p.numel() for p in new_params.values()),
        }

    def gate_weights(self) -> dict[str, float]:
        """Per-gate multipliers of ``gamma``: 1 for all, or ``cost_g / mean cost`` with ``cost_weighted``."""
        gates = list(iter_gates(self.net))
        if not self.hparams.cost_weighted:
            return {info.name: 1.0 for info in gates}
        if self._gate_weights is None:
            costs = structure_costs(self.net, self.hparams.input_size)
            counts = {info.name: info.module.num_structures for info in gates}
            mean = sum(costs[n] * counts[n] for n in costs) / sum(counts.values())
            if mean <= 0:
                raise ValueError("cost_weighted=True: no gate of this network controls any MACs")
            self._gate_weights = {name: cost / mean for name, cost in costs.items()}
        return self._gate_weights

    def param_groups(self) -> list[dict[str, Any]]:
        """The APG groups: weights (weight decay, no L1) and, while the network has gates, gates (L1, no
        weight decay) -- one group for all gates, or one per gate with its own gamma when cost-weighted."""
        hp = self.hparams
        trainable = [info for info in iter_gates(self.net) if info.module.scale.requires_grad]
        gate_ids = {id(info.module.scale) for info in trainable}
        weights = [p for p in self.net.parameters() if p.requires_grad and id(p) not in gate_ids]
        groups: list[dict[str, Any]] = [
            {
                "name": "weights",
                "params": weights,
                "weight_decay": hp.weight_decay,
                "gamma": 0.0,
                "mode": "apg",
                "nonnegative": False,
            }
        ]
        if not trainable:  # a pruned network (fine-tuning after surgery) has no gates left
            return groups
        gate_group = {
            "weight_decay": 0.0,
            "mode": hp.gate_mode,
            "momentum_units": hp.get("gate_momentum_units", "gradient"),
            "zero_hold": hp.get("zero_hold", 0),
            "nonnegative": self.gate_nonnegative,
            "lr": hp.lr if hp.gate_lr is None else hp.gate_lr,
        }
        if not hp.cost_weighted:
            groups.append(
                {"name": "gates", "params": [i.module.scale for i in trainable], "gamma": hp.gamma, **gate_group}
            )
            return groups
        weights_by_gate = self.gate_weights()
        for info in trainable:
            gamma = hp.gamma * weights_by_gate[info.name]
            groups.append({"name": f"gates:{info.name}", "params": [info.module.scale], "gamma": gamma, **gate_group})
        return groups

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if self._finetune is not None:
            optimizer = APG(self.param_groups(), lr=self._finetune["lr"], momentum=hp.momentum)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(self._finetune["steps"]))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        optimizer = APG(self.param_groups(), lr=hp.lr, momentum=hp.momentum)
        if hp.schedule == "constant":
            return optimizer
        if hp.schedule == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.milestones), gamma=hp.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class SSSClassifier(SSSModule):
    """SSSModule over a registry architecture: ``SSSClassifier(arch="resnet56", gates="block")``.

    The architecture is rebuilt from these hyper-parameters, so ``load_from_checkpoint`` needs no net.
    """

    def __init__(
        self,
        arch: str = "resnet20",
        num_classes: int = 10,
        in_channels: int = 3,
        gates: str = "both",
        arch_kwargs: dict[str, Any] | None = None,
        **sss_kwargs: Any,
    ) -> None:
        self.arch, self.arch_kwargs = arch, dict(arch_kwargs or {})
        self.arch_kwargs.update(num_classes=num_classes, in_channels=in_channels, gates=gates)
        super().__init__(net=None, num_classes=num_classes, **sss_kwargs)
        self.save_hyperparameters()

    def build_network(self) -> nn.Module:
        return build_model(self.arch, **self.arch_kwargs)


def _drop_frozen_gate_groups(checkpoint: dict[str, Any]) -> None:
    """A checkpoint taken after the gates were frozen (settle_at, FreezeGates, MacsBudget) may still hold
    the gate param groups the optimizer was built with, while the resumed module builds its optimizer
    without frozen gates: drop those groups (with their state and LR-schedule entries) so it resumes."""
    extra = (checkpoint.get("state_dict") or {}).get("_extra_state") or {}
    frozen = set(extra.get("frozen_gates") or [])
    if not frozen:
        return
    for i, opt in enumerate(checkpoint.get("optimizer_states") or []):
        groups = opt.get("param_groups", [])
        drop = [
            k
            for k, g in enumerate(groups)
            if str(g.get("name", "")) == "gates" or str(g.get("name", "")).removeprefix("gates:") in frozen
        ]
        drop = [k for k in drop if str(groups[k].get("name", "")).startswith("gates")]
        if not drop:
            continue
        gone = {pid for k in drop for pid in groups[k]["params"]}
        opt["param_groups"] = [g for k, g in enumerate(groups) if k not in drop]
        opt["state"] = {pid: v for pid, v in opt.get("state", {}).items() if pid not in gone}
        schedulers = checkpoint.get("lr_schedulers") or []
        if i < len(schedulers):
            for key in ("base_lrs", "_last_lr"):
                values = schedulers[i].get(key)
                if isinstance(values, list) and len(values) == len(groups):
                    schedulers[i][key] = [v for k, v in enumerate(values) if k not in drop]


def network_of(module: dict[str, Any]) -> nn.Module:
    """The network an SSSModule subclass builds in ``build_network()``, from the subclass's construction
    record ``{"name": "package.module:Class", "kwargs": hyper-parameters}``: how a pruned file of such a
    network is rebuilt in a fresh process (its record names this function)."""
    cls = resolve_import_path(module["name"])
    if not (isinstance(cls, type) and issubclass(cls, SSSModule)):
        raise TypeError(f"{module['name']} is not an SSSModule subclass, so network_of() does not build it")
    kwargs = dict(module["kwargs"])
    parameters = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in parameters}  # as load_from_checkpoint does
    return cls(**kwargs).net


network_of.sss_builder = True  # records may name it (see models.registry._may_build)


def _record_built_network(module: SSSModule) -> None:
    """Give a network that ``build_network()`` returned without a construction record its module's:
    the subclass's import path and hyper-parameters (checked by ``rebuild_problem`` where it matters)."""
    net = module.net
    if isinstance(net, nn.Module) and getattr(net, "sss_arch", None) is None:
        record = {"name": import_path(type(module)), "kwargs": dict(module.hparams)}
        net.sss_arch = {"name": import_path(network_of), "kwargs": {"module": record}}


def _skeleton(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose parameters and persistent buffers are on the meta device (no memory)."""
    memo: dict[int, Any] = {}
    for m in net.modules():
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                memo.setdefault(id(b), b.detach().to("meta"))
    return copy.deepcopy(net, memo)


def _materialise(skeleton: nn.Module, device: torch.device) -> nn.Module:
    """A real copy of a :func:`_skeleton`, its tensors allocated on ``device`` and zero (a state dict
    fills them); tied parameters stay tied."""
    net = copy.deepcopy(skeleton)
    made: dict[int, Tensor] = {}
    for m in net.modules():
        for name, p in m._parameters.items():
            if p is not None and p.is_meta:
                made.setdefault(id(p), nn.Parameter(torch.zeros_like(p, device=device), p.requires_grad))
                m._parameters[name] = made[id(p)]
        for name, b in m._buffers.items():
            if b is not None and b.is_meta:
                made.setdefault(id(b), torch.zeros_like(b, device=device))
                m._buffers[name] = made[id(b)]
    return net


def load_sss_checkpoint(path: str | Path) -> tuple[SSSModule, dict[str, Any]]:
    """Rebuild the SSSModule subclass that wrote a Lightning checkpoint, with its ``sss`` record.

    The class is read from the checkpoint, so any subclass that rebuilds its network from its
    hyper-parameters (``SSSClassifier``, or one overriding ``build_network``) loads without naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user's own training file
    info = checkpoint.get("sss") if isinstance(checkpoint, dict) else None
    if not info:
        raise ValueError(f"{path} is not a Lightning checkpoint of an SSSModule (it has no 'sss' record)")
    module_path, _, cls_name = info["module_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), cls_name)
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu")
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild {info['module_class']} from {path}: {err}. A module built with net=... cannot be "
            "rebuilt from a checkpoint; use SSSClassifier or a subclass that overrides build_network()"
        ) from err
    return module, info
