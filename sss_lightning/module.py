"""SSSModule: the LightningModule that trains a gated network with one two-group APG optimizer.

Weights go in one group (weight decay, ``gamma=0``: exactly Nesterov SGD), gates in the other (L1
``gamma`` by proximal steps, no weight decay, non-negative as in the official code); see
:mod:`sss_lightning.recipe`. Add an architecture by passing ``net=`` or by subclassing and overriding
:meth:`SSSModule.build_network`. Reshaping the network (surgery, in-training shrink) and what
checkpoints record of it live in :mod:`sss_lightning.reshaping`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from . import recipe
from .checkpoints import load_sss_checkpoint, network_of, read_record, record_built_network, write_record
from .gate_groups import freeze_all, gate_groups, structure_fixed
from .gates import gate_parameters, has_gates, iter_gates, set_zeros_pass_gradient, sparsity
from .models.registry import build_model
from .rescale import GatePairCache
from .reshaping import NetworkReshaping
from .shrink import rewrap_distributed
from .streams import check_streams

__all__ = ["SSSModule", "SSSClassifier", "load_sss_checkpoint", "network_of", "classification_step"]


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
        rescale_into: where rescaling puts that factor: ``"weights"`` (the consumer's weights) or ``"norm"``
            (for a consumer followed by BN, that BN's running statistics, so the consumer's weights train as
            without gates; others still get it in their weights); see :mod:`sss_lightning.rescale`.
        zero_hold: pin a gate at 0 once it has been exactly 0 for this many consecutive steps (0: never).
        gate_momentum_units: where the gates' APG velocity lives, ``"gradient"`` or ``"parameter"`` (the
            official APGNAG); see :mod:`sss_lightning.optim`.
        settle_at: after this fraction of the training steps, freeze every gate (the zero set is then the
            selection and the rest of the run trains the weights of that structure, without the L1 pull;
            add :class:`~sss_lightning.callbacks.InTrainingShrink` to train it at its smaller size). A
            callback that fixes the structure itself (``MacsBudget``) takes over by setting ``settled_by``.
        penalty_start: the fraction of the training steps before the gates' L1 term starts (0: from the
            first step). Before it the full network trains as the plain one would (the gates take gradient
            steps and are rescaled, nothing is pulled to zero), so the structure is selected from a network
            trained at full width; ``gamma`` must then be larger to reach the same sparsity in the shorter
            window. Must be before ``settle_at``.
        penalty_ramp: the fraction of the training steps over which the L1 strength grows linearly from 0
            (at ``penalty_start``) to ``gamma``, so the gates shrink slowly while the network is young and
            structures leave gradually rather than at once (0: the full ``gamma`` at once). The ramp must end
            before ``settle_at``.
        zeros_pass_gradient: while the gates select, the layers before a zero gate get their gradient as if
            it were 1 (the forward is unchanged), so the weights of a structure that is off keep training and
            it comes back trained if its gate revives, as every structure trains under a pruner that cuts
            once; non-zero and frozen gates (``settle_at``, ``MacsBudget``) pass the true gradient.
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
        schedule: recipe.Schedule = "cosine",
        milestones: Sequence[int] = (120, 160, 240),
        lr_decay: float = 0.1,
        cost_weighted: bool = False,
        input_size: Sequence[int] | None = None,
        freeze_gates: bool = False,
        gate_rescale: bool = True,
        rescale_into: Literal["weights", "norm"] = "weights",
        zero_hold: int = 100,
        gate_momentum_units: Literal["gradient", "parameter"] = "gradient",
        settle_at: float | None = 0.75,
        penalty_start: float = 0.0,
        penalty_ramp: float = 0.0,
        zeros_pass_gradient: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if recipe.check_input_size(input_size) is not None:
            self.example_input_array = torch.zeros(1, *input_size)
        self.gate_nonnegative = recipe.check_recipe(self.hparams)
        self._gate_weights: dict[str, float] | None = None
        self._gate_pairs = GatePairCache()  # the gates rescaling moves, found again only when the network changes
        self.net = net if net is not None else self.build_network()
        if net is None:
            record_built_network(self)
        if not isinstance(self.net, nn.Module):
            raise TypeError(f"the network must be an nn.Module, got {type(self.net).__name__}")
        if not has_gates(self.net):
            raise ValueError(
                f"{type(self.net).__name__} has no gates, so SSS has nothing to select. Fix: add "
                "sss_lightning.gates.ChannelGate/GroupGate/BlockGate modules to it, or build a registry "
                "model with gates='block', 'channel', 'both' or 'all'."
            )
        self._streams_checked = self.example_input_array is not None
        if self._streams_checked:  # a wrongly declared stream is an error now, not a wrong pruned network
            check_streams(self.net, input_size)
        if freeze_gates:
            for p in gate_parameters(self.net):
                p.requires_grad_(False)
        linears = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        num_classes = num_classes or (linears[-1].out_features if linears else None)
        if not num_classes:
            raise ValueError("cannot infer num_classes (the network has no nn.Linear); pass num_classes=")
        self._finetune: dict[str, float] | None = None
        self.reshaping = NetworkReshaping()
        self.settled_by: str | None = None  # a callback that fixes the structure itself (MacsBudget)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro") for _ in "tvt")

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
        if not self._streams_checked:
            check_streams(self.net, self.example_input_array.shape[1:])
            self._streams_checked = True
        loss = self._shared_step(batch, "train", self.train_acc)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: the loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}. The run stops before any snapshot or surgery writes a broken model, and "
                "the last checkpoint is kept. Fix: lower lr or gamma, or set trainer.gradient_clip_val"
            )
        # only on the steps the logger writes: the sparsity summary costs a device sync
        summary = sparsity(self.net) if self.trainer.global_step % self.trainer.log_every_n_steps == 0 else {}
        if summary:  # a network already pruned (fine-tuning after surgery) has no gates left
            self.log_dict({f"sparsity/{k}": v for k, v in summary.items() if "_" not in k}, on_step=True)
            self.log("sparsity", summary["overall"], prog_bar=True, logger=False)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.get("zeros_pass_gradient", False):  # every step: a rebuilt or shrunk net has new gates
            set_zeros_pass_gradient(self.net, True)
        if self._trainer is not None:  # every step: a resumed optimizer state carries the scale it was saved with
            steps = self.trainer.estimated_stepping_batches
            scale = recipe.penalty_scale(self.hparams, self.trainer.global_step, steps)
            for group in gate_groups(self.trainer.optimizers[0]):
                group.l1_scale = scale

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the recipe's gate rescaling and its check that no gate became non-finite,
        before any callback (checkpoint, snapshot, surgery) sees the new state."""
        super().optimizer_step(*args, **kwargs)
        optimizer = self.trainer.optimizers[0] if self._trainer is not None else None
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        recipe.after_step(self.net, optimizer, self.hparams, where, self._gate_pairs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        settle = self.hparams.get("settle_at")
        if settle is not None and self.settled_by is None and not structure_fixed(self.net):
            if self.trainer.global_step >= math.ceil(settle * self.trainer.estimated_stepping_batches):
                self.settle(f"structure settled at step {self.trainer.global_step} (settle_at={settle})")

    def settle(self, reason: str) -> None:
        """Fix the structure now: every gate group is frozen (explicit optimizer state, checkpointed) and
        DDP re-wrapped (it registered the gates for all-reduce; frozen, they get no gradient)."""
        freeze_all(self.trainer.optimizers[0], self.net)
        rewrap_distributed(self.trainer)
        rank_zero_info(f"{type(self).__name__}: {reason}: gates frozen")

    def on_train_start(self) -> None:
        recipe.check_penalty_steps(self.hparams, self.trainer.estimated_stepping_batches)
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
        """Record what is needed to rebuild this module (see :func:`~sss_lightning.checkpoints.write_record`)."""
        write_record(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        read_record(self, checkpoint)

    def get_extra_state(self) -> dict[str, Any]:
        """Kept in the state dict so that every way of loading it (resume, ``load_from_checkpoint``, the
        weights ddp_spawn hands back to the main process) first reshapes the network to match: the
        architecture after surgery or shrink, and which gates are frozen (see
        :meth:`~sss_lightning.reshaping.NetworkReshaping.extra_state`)."""
        return self.reshaping.extra_state(self.net)

    def set_extra_state(self, state: Any) -> None:
        self.reshaping.load_extra_state(self, state)

    def prepare_finetune(self, lr: float, total_steps: int) -> None:
        """Called after surgery replaced ``net``: the next ``configure_optimizers`` builds a fresh optimizer
        holding only the new network's parameters (Nesterov SGD, cosine from ``lr`` over ``total_steps``)."""
        self._finetune = recipe.check_finetune(lr, total_steps, self.hparams.momentum)

    @property
    def reshaped(self) -> bool:
        """Whether the network was replaced by a smaller one (in-training shrink or surgery)."""
        return self.reshaping.reshaped

    @property
    def shrunk_gates(self) -> dict[str, Tensor]:
        """After :meth:`shrink`: per surviving gate, the positions its entries had before the shrink."""
        return self.reshaping.shrunk_gates

    def replace_network(self, net: nn.Module) -> None:
        """Swap in a reshaped network (surgery or shrink); checkpoints then record its architecture."""
        self.reshaping.replace(self, net)

    def network_as_built(self) -> nn.Module:
        """A copy of the network's structure as this module built it, before any shrink or surgery (its
        weights are zeros: for counting what the reshaping saved, not for running)."""
        return self.reshaping.as_built(self.net)

    def shrink(self) -> dict[str, int]:
        """Mid-fit, replace the network by its sliced form (zero structures removed, surviving gates kept)
        and rebuild the optimizer over the surviving parameters with their momentum, group settings and
        schedule position carried over, so training continues as if nothing changed, only faster.

        Zero structures can no longer come back. Returns parameter counts before and after; afterwards
        :attr:`shrunk_gates` maps each surviving gate to the positions its entries had before.
        """
        return self.reshaping.shrink(self)

    def gate_weights(self) -> dict[str, float]:
        """Per-gate multipliers of ``gamma``: 1 for all, or ``cost_g / mean cost`` with ``cost_weighted``."""
        if not self.hparams.cost_weighted:
            return {info.name: 1.0 for info in iter_gates(self.net)}
        if self._gate_weights is None:
            self._gate_weights = recipe.cost_weights(self.net, self.hparams.input_size)
        return self._gate_weights

    def param_groups(self) -> list[dict[str, Any]]:
        """The APG groups: weights (weight decay, no L1) and, while the network has gates, gates (L1, no
        weight decay) -- one group for all gates, or one per gate with its own gamma when cost-weighted."""
        hp = self.hparams
        by_gate = None
        if hp.cost_weighted and has_gates(self.net):
            by_gate = {name: hp.gamma * w for name, w in self.gate_weights().items()}
        return recipe.param_groups(self.net, hp, self.gate_nonnegative, by_gate)

    def configure_optimizers(self) -> Any:
        cosine = self._finetune is None and self.hparams.schedule == "cosine"
        total = self.trainer.estimated_stepping_batches if cosine else 0
        return recipe.configure_optimizers(self.param_groups(), self.hparams, total, self._finetune)


class SSSClassifier(SSSModule):
    """SSSModule over a registry architecture: ``SSSClassifier(arch="resnet56", gates="block")``.

    ``gates=None`` (the default) builds the architecture's own default gates (``"all"`` on the CIFAR
    ResNets, ``"channel"`` on VGG, ``"both"`` on ResNeXt, ``"block"`` on the ImageNet ResNets). The
    architecture is rebuilt from these hyper-parameters, so ``load_from_checkpoint`` needs no net.
    """

    def __init__(
        self,
        arch: str = "resnet20",
        num_classes: int = 10,
        in_channels: int = 3,
        gates: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        **sss_kwargs: Any,
    ) -> None:
        self.arch, self.arch_kwargs = arch, dict(arch_kwargs or {})
        self.arch_kwargs.update(num_classes=num_classes, in_channels=in_channels)
        if gates is not None:
            self.arch_kwargs["gates"] = gates
        super().__init__(net=None, num_classes=num_classes, **sss_kwargs)
        self.save_hyperparameters()

    def build_network(self) -> nn.Module:
        return build_model(self.arch, **self.arch_kwargs)
