"""Network Slimming and DepGraph baselines through the Torch-Pruning library (``pip install sss-lightning[bench]``).

Both run inside one Lightning fit of a plain network (:class:`PlainClassifier`, no gates), driven by the
:class:`TorchPruningBaseline` callback: Torch-Pruning's sparsity regulariser on every training step up to
the end of epoch ``prune_at_epoch``, a one-shot global prune there to a MACs target, and fine-tuning of the
pruned network for the remaining epochs of the same run, on the same LR curve. Nothing of the methods is
re-implemented here: the regulariser, the importance and the pruning are Torch-Pruning's own
(``tp.pruner.BNScalePruner`` / ``tp.pruner.GroupNormPruner``, ``pruner.regularize(model)``, ``pruner.step()``).

``method``:

* ``"slimming"``: Network Slimming (Liu et al., ICCV 2017) as Torch-Pruning's ``slim`` method:
  ``BNScalePruner`` with ``BNScaleImportance()`` (L1 subgradient ``reg * sign(gamma)`` on every BN scale;
  a channel's score is its group's BN scales, normalised by their mean);
* ``"depgraph"``: DepGraph's sparse training (Fang et al., CVPR 2023) as Torch-Pruning's ``group_sl``
  method: ``GroupNormPruner`` with ``GroupMagnitudeImportance(p=2, normalizer="max")`` (group-L2
  regulariser over every layer a channel couples, weighted ``alpha**((max - imp) / (max - min))`` with
  ``alpha = 2**4``, the default of ``GroupNormPruner.regularize``).

Defaults taken from Torch-Pruning's own benchmark (repository VainF/Torch-Pruning, v1.6.1, commit
``e80127d``; the benchmark folder is ``reproduce/``, named ``benchmarks/`` before v1.4.1, and
``metapruner.py`` is ``base_pruner.py`` since v1.5.2), CIFAR-10 ResNet-56 at 2.11x speed-up:

* ``slim``: ``reg = 1e-5``, from ``reproduce/scripts/prune/cifar/bn_pruner.sh`` line 3
  (``--method slim --speed-up 2.11 --global-pruning --reg 1e-5``; the same command in
  ``reproduce/readme.md`` line 62, and ``reg: 1e-05`` in its run log
  ``reproduce/run/cifar10/prune/cifar10-global-slim-resnet56/cifar10-global-slim-resnet56.txt``).
  ``BNScalePruner``'s own default is also ``reg=1e-5`` (``batchnorm_scale_pruner.py`` line 54). The
  CIFAR-100 ablation ``reproduce/scripts/prune/ablation/global_slim.sh`` uses ``--reg 1e-4``.
* ``group_sl``: ``reg = 5e-4``, from ``reproduce/scripts/prune/cifar/group_pruner.sh`` line 3
  (``--method group_sl --speed-up 2.11 --global-pruning --reg 5e-4``; ``reproduce/readme.md`` lines 81
  and 84; ``reg: 0.0005`` in ``reproduce/run/cifar10/prune/cifar10-global-group_sl-resnet56/...txt``;
  also the ``--reg`` default of ``reproduce/main.py`` line 37). ``GroupNormPruner``'s own default is
  ``reg=1e-4`` (``group_norm_pruner.py`` line 53); the CIFAR-100 ablation
  ``reproduce/scripts/prune/ablation/global_group_sl.sh`` uses ``--reg 2e-4``.
* both: global pruning (``--global-pruning``), importances as in ``reproduce/main.py`` lines 204-218,
  the classifier excluded (``ignored_layers``, lines 230-235: every ``Linear``/conv whose output size is
  the number of classes; here the network's last ``nn.Linear``, since a conv of a narrow test network can
  have as many channels as there are classes), and ``pruner.regularize(model)`` after
  ``loss.backward()`` and before ``optimizer.step()`` (lines 137-141).

Where this protocol differs from that benchmark, on purpose (one training run with the same step budget
as SSS, so the Pareto comparison is paired):

* the benchmark starts sparse learning from a *pretrained* network (``--restore``) and trains 100 epochs
  at ``--sl-lr 0.01`` (MultiStep 60, 80), then prunes and fine-tunes another 100 epochs (log above);
  here the regulariser is on from the first step of the run and fine-tuning takes the rest of it;
* the benchmark turns weight decay off while the regulariser is on (``main.py`` line 122:
  ``weight_decay=weight_decay if pruner is None else 0``); here the module's weight decay stays on, as
  it does for the SSS runs it is compared with;
* the benchmark prunes progressively (``iterative_steps=400``, ``pruning_ratio=1.0``, one small step at
  a time until the speed-up is reached, ``main.py`` lines 52-80 and 237-249); here the pruning is one
  shot (``iterative_steps=1``) at the global pruning ratio that meets the MACs target, found by
  bisection (below). In one shot Torch-Pruning leaves a group whole rather than remove all its channels
  (``DependencyGraph.check_pruning_group``), so MACs are not monotone in the ratio at high ratios; the
  search brackets the first crossing of the target from above, where they are.

MACs are counted with :func:`sss_lightning.flops.count_flops` (conv/linear multiply-adds, batch 1), the
counter every other method of the benchmark is measured with, never with Torch-Pruning's own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from sss_lightning.flops import check_input_size, count_flops
from sss_lightning.io import apply_spec, architecture_spec
from sss_lightning.models import build_model
from sss_lightning.module import classification_step
from sss_lightning.shrink import carry_optimizer_state, carry_scheduler_state, rewrap_distributed

__all__ = ["PlainClassifier", "TorchPruningBaseline", "DEFAULT_REG", "METHODS"]

Method = Literal["slimming", "depgraph"]
METHODS: tuple[str, ...] = ("slimming", "depgraph")
# Torch-Pruning's benchmark values (module docstring): bn_pruner.sh and group_pruner.sh, line 3 each.
DEFAULT_REG: dict[str, float] = {"slimming": 1e-5, "depgraph": 5e-4}
_TP_NAME = {"slimming": "slim (BNScalePruner)", "depgraph": "group_sl (GroupNormPruner)"}
# Where the bracket search looks for the first global pruning ratio at or below the MACs target.
_SCAN = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _import_torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(
            "TorchPruningBaseline runs Torch-Pruning's own pruners, and torch_pruning is not installed. "
            "Fix: pip install 'sss-lightning[bench]' (or pip install 'torch-pruning>=1.5')"
        ) from err
    return torch_pruning


class PlainClassifier(L.LightningModule):
    """A registry network without gates, trained as the SSS weights are: cross-entropy, Nesterov SGD with
    weight decay, cosine LR over ``trainer.estimated_stepping_batches`` stepped every optimizer step.

    ``build_model(arch, gates="none", ...)`` draws its conv and linear weights exactly as
    ``gates="channel"``/``"both"`` do after the same ``L.seed_everything`` (gates are constant and draw no
    random numbers), so a baseline and an SSS run of one seed start from the same weights.

    A network pruned in place (by :class:`TorchPruningBaseline`) is saved with its shape: the state dict
    carries its architecture spec (:func:`~sss_lightning.io.architecture_spec`), so resume,
    ``load_from_checkpoint`` and ``load_state_dict`` rebuild the pruned shape before loading the weights.

    Args:
        arch: registry name (``sss_lightning.models.list_models()``), e.g. ``"resnet20"``.
        num_classes, in_channels: classes and input channels of the network.
        lr, momentum, weight_decay: the SGD (paper setting: 0.1, 0.9, 1e-4).
        arch_kwargs: other arguments of the architecture, e.g. ``{"width": 8}``.
    """

    def __init__(
        self,
        arch: str = "resnet20",
        num_classes: int = 10,
        in_channels: int = 1,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_real(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}; the paper uses lr=0.1")
        if not _is_real(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}; the paper uses momentum=0.9")
        if momentum == 0:
            raise ValueError("momentum=0 cannot be used with Nesterov SGD; pass momentum > 0 (the paper: 0.9)")
        if not _is_real(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if arch_kwargs is not None and not isinstance(arch_kwargs, dict):
            raise ValueError(f"arch_kwargs must be a dict of architecture arguments, got {arch_kwargs!r}")
        reserved = sorted({"gates", "num_classes", "in_channels"} & set(arch_kwargs or {}))
        if reserved:
            raise ValueError(
                f"arch_kwargs must not set {reserved}: PlainClassifier builds gates='none' and takes num_classes "
                "and in_channels as its own arguments; pass those instead"
            )
        self.save_hyperparameters()
        self.net = build_model(
            arch, gates="none", num_classes=num_classes, in_channels=in_channels, **dict(arch_kwargs or {})
        )
        self._built_shapes = self._shapes()
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.net.named_parameters()}

    @property
    def pruned(self) -> bool:
        """Whether the network's shape differs from the network as built (pruned in place, or loaded so)."""
        return self._shapes() != self._built_shapes

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str, metric: MulticlassAccuracy) -> Tensor:
        return classification_step(self, batch, stage, metric)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train", self.train_acc)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: the loss is {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}. Fix: lower lr (now {self.hparams.lr}) or set trainer.gradient_clip_val"
            )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.SGD(
            [{"name": "weights", "params": [p for p in self.net.parameters() if p.requires_grad]}],
            lr=hp.lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            nesterov=True,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def get_extra_state(self) -> dict[str, Any]:
        """The pruned shape (architecture spec) when the network no longer has its built shape, else None."""
        return {"architecture": architecture_spec(self.net) if self.pruned else None}

    def set_extra_state(self, state: Any) -> None:
        # torch loads a module's own extra state before its children's, so the rebuilt network gets the weights
        if isinstance(state, dict) and state.get("architecture"):
            param = next(self.net.parameters())
            self.net = apply_spec(state["architecture"]).to(device=param.device, dtype=param.dtype)


class TorchPruningBaseline(Callback):
    """Torch-Pruning's sparse training, one-shot global pruning to a MACs target, then fine-tuning.

    * Epochs ``1 .. prune_at_epoch`` (counted from 1): after every backward pass and before the optimizer
      step (``on_before_optimizer_step``: once per optimizer step, after AMP unscaling, before gradient
      clipping), ``pruner.regularize(net)`` adds the method's sparsity gradient with strength ``reg``.
    * End of epoch ``prune_at_epoch`` (after its validation): the network is pruned by Torch-Pruning
      (global pruning, one shot, the last ``nn.Linear`` kept whole) so that its MACs are
      ``target_macs`` of the unpruned network's within ``tolerance`` (absolute:
      ``|macs_after / macs_before - target_macs| <= tolerance``), both counted with
      :func:`~sss_lightning.flops.count_flops` at ``input_size``. The global pruning ratio is found by
      bisection on deep copies (each pruned by a fresh pruner, as the real network then is): a scan
      brackets the first ratio whose MACs are at or below the target, bisection narrows the bracket to
      one channel, and the closer of its two ends is applied to the real network. A target that
      Torch-Pruning cannot reach (too small, or between two MACs one channel apart) is a ``ValueError``
      saying what was reachable.
    * The rest of the run fine-tunes the pruned network in the same step budget: the optimizer is rebuilt
      over the new parameters (``trainer.strategy.setup_optimizers``) with each group's settings and
      current LR, and the LR scheduler continues from its position (``carry_scheduler_state``), so the LR
      curve is that of an unpruned run. Momentum is carried over for every surviving weight entry (the
      index map is read off Torch-Pruning's own pruning history, replayed on an index-tagged copy); if
      that map cannot be built the momentum restarts at zero, with a warning. Nothing here draws random
      numbers, so the data order after pruning is that of an unpruned run of the same seed.

    The LightningModule must keep its network in ``.net`` (as :class:`PlainClassifier` and SSSModule
    do) and have one optimizer. ``self.report`` holds ``macs_before``, ``macs_after``, ``macs_ratio``
    (after / before), ``params_after``, ``pruning_ratio`` (Torch-Pruning's global ratio that was applied),
    ``epoch`` and ``step`` once pruned; it is part of the callback's checkpoint state, so a resumed run
    does not prune again (its module must restore the pruned shape, as :class:`PlainClassifier` does).

    Args:
        method: ``"slimming"`` (BNScalePruner) or ``"depgraph"`` (GroupNormPruner).
        target_macs: MACs after pruning as a fraction of the unpruned network's, in (0, 1).
        prune_at_epoch: the epoch (from 1) at whose end the network is pruned; at most ``max_epochs``.
        input_size: ``(C, H, W)`` of one input, for tracing and MACs.
        reg: regularisation strength; ``None`` takes Torch-Pruning's benchmark value
            (:data:`DEFAULT_REG`: 1e-5 for slimming, 5e-4 for depgraph). ``0`` trains without it.
        tolerance: allowed absolute error of the MACs fraction, in (0, 1).
    """

    def __init__(
        self,
        method: Method,
        target_macs: float,
        prune_at_epoch: int,
        input_size: Sequence[int],
        reg: float | None = None,
        tolerance: float = 0.01,
    ) -> None:
        if method not in METHODS:
            raise ValueError(
                f"method must be 'slimming' (Torch-Pruning's BNScalePruner) or 'depgraph' (GroupNormPruner), "
                f"got {method!r}"
            )
        if not _is_real(target_macs) or not 0 < target_macs < 1:
            raise ValueError(
                f"target_macs must be a fraction of the unpruned network's MACs in (0, 1), got {target_macs!r}; "
                "e.g. 0.5 keeps half the MACs"
            )
        if not _is_int(prune_at_epoch) or prune_at_epoch < 1:
            raise ValueError(
                f"prune_at_epoch must be an integer >= 1 (epochs count from 1: 1 prunes at the end of the first "
                f"epoch), got {prune_at_epoch!r}"
            )
        check_input_size(input_size)
        if reg is not None and (not _is_real(reg) or reg < 0):
            raise ValueError(
                f"reg must be a finite number >= 0 or None (Torch-Pruning's benchmark value, "
                f"{DEFAULT_REG[method]:g} for {method}), got {reg!r}"
            )
        if not _is_real(tolerance) or not 0 < tolerance < 1:
            raise ValueError(
                f"tolerance must be the allowed absolute error of the MACs fraction, in (0, 1), got {tolerance!r}; "
                "e.g. 0.01"
            )
        self._tp = _import_torch_pruning()
        self.method = method
        self.target_macs = float(target_macs)
        self.prune_at_epoch = prune_at_epoch
        self.input_size = tuple(input_size)
        self.reg = DEFAULT_REG[method] if reg is None else float(reg)
        self.tolerance = float(tolerance)
        self.report: dict[str, Any] = {}
        self.macs_before: int | None = None
        self._pruner: Any = None  # the regularising pruner over the live network (not saved: rebuilt on resume)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            method=self.method, target_macs=self.target_macs, prune_at_epoch=self.prune_at_epoch
        )

    # ----------------------------------------------------------------------------------------- Torch-Pruning

    def make_pruner(self, net: nn.Module, pruning_ratio: float) -> Any:
        """The method's Torch-Pruning pruner over ``net`` (global, one shot, the last ``nn.Linear`` ignored),
        built without changing any module's train/eval mode (Torch-Pruning's tracing sets eval)."""
        tp = self._tp
        heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not heads:
            raise ValueError(
                f"{type(net).__name__} has no nn.Linear classifier to keep whole; TorchPruningBaseline prunes "
                "classification networks whose last nn.Linear is the classifier"
            )
        if self.method == "slimming":
            importance, pruner_cls = tp.importance.BNScaleImportance(), tp.pruner.BNScalePruner
        else:
            group_magnitude = getattr(tp.importance, "GroupMagnitudeImportance", None)
            if group_magnitude is None:  # Torch-Pruning 1.5.x name
                group_magnitude = tp.importance.GroupNormImportance
            importance, pruner_cls = group_magnitude(p=2, normalizer="max"), tp.pruner.GroupNormPruner
        param = next(net.parameters())
        example = torch.zeros(1, *self.input_size, device=param.device, dtype=param.dtype)
        modes = {m: m.training for m in net.modules()}
        try:
            with torch.enable_grad():  # tracing reads the autograd graph
                return pruner_cls(
                    net,
                    example,
                    importance=importance,
                    reg=self.reg,
                    global_pruning=True,
                    pruning_ratio=pruning_ratio,
                    iterative_steps=1,
                    ignored_layers=[heads[-1]],
                )
        finally:
            for m, training in modes.items():
                m.training = training

    def _macs(self, net: nn.Module) -> int:
        return count_flops(net, self.input_size).macs

    def search_ratio(self, net: nn.Module, macs_before: int) -> tuple[float, float]:
        """The global pruning ratio to apply to ``net`` and the MACs fraction it gives, found on deep copies."""
        target, cache = self.target_macs, {0.0: 1.0}
        channels = [0]

        def fraction(ratio: float) -> float:
            if ratio not in cache:
                trial = copy.deepcopy(net)
                pruner = self.make_pruner(trial, ratio)
                channels[0] = max(channels[0], int(getattr(pruner, "initial_total_channels", 0)))
                pruner.step()
                cache[ratio] = self._macs(trial) / macs_before
            return cache[ratio]

        lo, hi = 0.0, None
        for ratio in _SCAN:
            if fraction(ratio) <= target:
                hi = ratio
                break
            lo = ratio
        if hi is None:
            smallest = min(cache.values())
            raise ValueError(
                f"Torch-Pruning's one-shot global {_TP_NAME[self.method]} cannot bring {type(net).__name__} down to "
                f"target_macs={self.target_macs:g} of its MACs: the smallest fraction reached at pruning ratios "
                f"up to {_SCAN[-1]} is {smallest:.4f} (it keeps every group at least one channel, and leaves "
                f"whole a group it would empty). Fix: a target_macs of at least {smallest + self.tolerance:.3f}"
            )
        # at most one channel (1 / channels of ratio) between lo and hi: their kept-channel counts are adjacent
        step = 0.5 / channels[0] if channels[0] > 0 else 1e-4
        while hi - lo > step:
            mid = (lo + hi) / 2
            if fraction(mid) > target:
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda r: abs(fraction(r) - target))
        if abs(fraction(best) - target) > self.tolerance:
            raise ValueError(
                f"Torch-Pruning's global {_TP_NAME[self.method]} cannot prune {type(net).__name__} to "
                f"target_macs={target:g} within tolerance={self.tolerance:g}: one channel apart, the closest MACs "
                f"fractions are {fraction(lo):.4f} (pruning ratio {lo:.5f}) and {fraction(hi):.4f} (ratio "
                f"{hi:.5f}). Fix: tolerance >= {abs(fraction(best) - target):.4f}, another target_macs, or a wider "
                "network (smaller steps per channel)"
            )
        return best, fraction(best)

    def _momentum_sources(
        self, tagged: nn.Module, history: list[Any], old: dict[str, Tensor], new: dict[str, Tensor]
    ) -> dict[str, Tensor] | None:
        """Per parameter of the pruned network, the flat indices of the old same-named parameter's entries
        it holds: Torch-Pruning's pruning history replayed on an (unpruned) copy whose entries hold their own
        flat positions. ``None`` where the map does not reproduce the pruned parameters exactly."""
        tp = self._tp
        try:
            example = torch.zeros(1, *self.input_size, dtype=torch.float64)
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(tagged, example_inputs=example)
            with torch.no_grad():
                for p in tagged.parameters():
                    p.copy_(torch.arange(p.numel(), dtype=torch.float64).view_as(p))
            graph.load_pruning_history(history)
            sources: dict[str, Tensor] = {}
            for name, p in tagged.named_parameters():
                if name not in new or name not in old or p.shape != new[name].shape:
                    return None
                index = p.detach().flatten().round().long().to(new[name].device)
                if not torch.equal(old[name].detach().flatten()[index].view_as(new[name]), new[name].detach()):
                    return None
                sources[name] = index
            return sources if set(sources) == set(new) else None
        except Exception as err:  # the map is an optimisation: momentum then restarts, with a warning
            rank_zero_warn(f"TorchPruningBaseline: no index map for the momentum ({type(err).__name__}: {err})")
            return None

    # --------------------------------------------------------------------------------------------- hooks

    def _net(self, pl_module: L.LightningModule) -> nn.Module:
        net = getattr(pl_module, "net", None)
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"TorchPruningBaseline prunes pl_module.net, and {type(pl_module).__name__} has no nn.Module "
                "attribute 'net'. Fix: use PlainClassifier, or keep the network in self.net"
            )
        return net

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._net(pl_module)
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and self.prune_at_epoch > max_epochs:
            raise ValueError(
                f"prune_at_epoch={self.prune_at_epoch} is after the last epoch (max_epochs={max_epochs}), so the "
                f"network would never be pruned. Fix: prune_at_epoch <= {max_epochs} (epochs after it fine-tune)"
            )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = self._net(pl_module)
        if self.report:  # resumed after pruning: the module must have restored the pruned shape
            macs = self._macs(net)
            if macs != self.report["macs_after"]:
                raise RuntimeError(
                    f"the checkpoint says the network was pruned to {self.report['macs_after']:,} MACs, but "
                    f"{type(pl_module).__name__}.net has {macs:,}: the module did not restore the pruned shape. "
                    "Fix: use PlainClassifier (its state dict carries the shape), or restore it in on_load_checkpoint"
                )
            return
        if self.macs_before is None:
            self.macs_before = self._macs(net)
        if trainer.current_epoch < self.prune_at_epoch:
            self._pruner = self.make_pruner(net, pruning_ratio=0.5)  # the ratio is unused: it only regularises

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._pruner is not None and not self.report and trainer.current_epoch < self.prune_at_epoch:
            self._pruner.regularize(pl_module.net)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.report and trainer.current_epoch + 1 == self.prune_at_epoch:
            self.prune(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pruner = None
        if not self.report:
            rank_zero_warn(
                f"TorchPruningBaseline: training ended before the end of epoch {self.prune_at_epoch}, so the "
                "network was not pruned (max_steps or early stopping ended it first)"
            )

    def prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Prune ``pl_module.net`` to the MACs target now and rebuild the optimizer; returns the report."""
        net = self._net(pl_module)
        self._pruner = None  # its groups point at the network about to change
        if len(trainer.optimizers) > 1:
            raise ValueError(
                f"TorchPruningBaseline rebuilds one optimizer after pruning; {type(pl_module).__name__} has "
                f"{len(trainer.optimizers)}. Fix: configure a single optimizer"
            )
        if self.macs_before is None:
            self.macs_before = self._macs(net)
        ratio, expected = self.search_ratio(net, self.macs_before)
        old_optimizer = trainer.optimizers[0] if trainer.optimizers else None
        configs = trainer.lr_scheduler_configs
        old_scheduler = configs[0].scheduler if configs else None
        old_params = dict(net.named_parameters())
        tagged = copy.deepcopy(net).to(device="cpu", dtype=torch.float64)

        pruner = self.make_pruner(net, ratio)
        pruner.step()
        history = list(pruner.pruning_history())
        del pruner
        macs_after = self._macs(net)
        if macs_after / self.macs_before != expected:
            raise RuntimeError(
                f"pruning the network at ratio {ratio:.5f} gave {macs_after / self.macs_before:.4f} of its MACs, "
                f"but the same pruning of its copy gave {expected:.4f}: Torch-Pruning's choice is not reproducible"
            )

        if old_optimizer is not None:
            rewrap_distributed(trainer)
            trainer.strategy.setup_optimizers(trainer)
            new_optimizer = trainer.optimizers[0]
            new_params = dict(net.named_parameters())
            if len(old_optimizer.param_groups) == len(new_optimizer.param_groups):  # lr etc. by position
                for old_group, group in zip(old_optimizer.param_groups, new_optimizer.param_groups, strict=True):
                    group.update({k: v for k, v in old_group.items() if k != "params"})
            sources = self._momentum_sources(tagged, history, old_params, new_params)
            if sources is None:
                rank_zero_warn("TorchPruningBaseline: the momentum restarts at zero after pruning")
                sources = {}
            carry_optimizer_state(old_optimizer, new_optimizer, old_params, new_params, sources)
            if old_scheduler is not None and trainer.lr_scheduler_configs:
                carry_scheduler_state(old_scheduler, trainer.lr_scheduler_configs[0].scheduler, old_optimizer)

        self.report = {
            "macs_before": int(self.macs_before),
            "macs_after": int(macs_after),
            "macs_ratio": macs_after / self.macs_before,
            "params_after": sum(p.numel() for p in net.parameters()),
            "pruning_ratio": float(ratio),
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
        }
        rank_zero_info(
            f"TorchPruningBaseline ({self.method}, reg={self.reg:g}): end of epoch {self.prune_at_epoch}, MACs "
            f"{self.macs_before:,} -> {macs_after:,} ({self.report['macs_ratio']:.4f}, target {self.target_macs:g}) "
            f"at global pruning ratio {ratio:.4f}"
        )
        for logger in trainer.loggers:
            logger.log_metrics(
                {"prune/macs_ratio": self.report["macs_ratio"], "prune/params": float(self.report["params_after"])},
                step=trainer.global_step,
            )
        return self.report

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"report": dict(self.report), "macs_before": self.macs_before, "reg": self.reg}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.report = dict(state_dict.get("report") or {})
        self.macs_before = state_dict.get("macs_before")
