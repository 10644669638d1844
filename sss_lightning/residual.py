"""The gated residual block and the gate-fused forward of a branch: the residual shape surgery knows.

:class:`GatedResidual` is ``post_act(gate(branch(x)) + shortcut(x))``: a branch (an ``nn.Sequential``
whose channel/group gates sit right after the layer they scale), a shortcut, an optional block gate and
the activation after the add. Every residual architecture of :mod:`sss_lightning.models` and any user
block built from it is cut by the same surgery code path, and recorded in pruned files the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .gates import BlockGate, ChannelGate, GroupGate

__all__ = ["GatedResidual", "run_fused"]


def run_fused(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)``, with each channel/group gate that directly precedes a plain conv folded into that conv.

    ``conv(x * s)`` equals a conv whose weights' input channels are scaled by ``s`` (zero padding stays
    zero), so the gate costs a multiply over the weights instead of a pass over the activations forward
    and two backward: that pass is most of what gates add to a training step. Only where gradients are
    recorded and nothing traces or compiles the model (tracers and compilers see the plain modules, and
    ``torch.compile`` fuses the multiply itself). Module hooks still fire on the conv; the gate module
    itself is not called.
    """
    fuse = torch.is_grad_enabled() and not (
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
    )
    layers = list(seq)
    i = 0
    while i < len(layers):
        layer, nxt = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if (
            fuse
            and isinstance(layer, (ChannelGate, GroupGate))
            and not layer.passes_gradient()  # folded into the weights, a zero entry would block the input's gradient
            and type(nxt) is nn.Conv2d
            and nxt.groups == 1
            and x.dim() == 4
            and x.shape[1] == nxt.in_channels
            and nxt.in_channels % layer.num_structures == 0
            and (isinstance(layer, GroupGate) or layer.num_structures == nxt.in_channels)
        ):
            weight = nxt.weight * layer.channel_factors(nxt.in_channels).view(1, -1, 1, 1)
            x = functional_call(nxt, {"weight": weight}, (x,), strict=False)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x


class GatedResidual(nn.Module):
    """``post_act(gate(branch(x)) + shortcut(x))``, the residual block SSS selects.

    After surgery ``branch`` may be ``None`` (its block gate was zero) and ``branch_bias`` may hold the
    constant a branch reduces to when all its inner channels were cut (its BN shift times its gate).
    """

    def __init__(
        self,
        branch: nn.Sequential | None,
        shortcut: nn.Module | None = None,
        gate: nn.Module | None = None,
        post_act: nn.Module | None = None,
        branch_bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.branch = branch
        self.gate = gate if gate is not None else nn.Identity()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.post_act = post_act if post_act is not None else nn.Identity()
        self.register_buffer("branch_bias", branch_bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.shortcut(x)
        if self.branch is not None:
            branch = run_fused(self.branch, x)
            if type(self.gate) is BlockGate:  # one fused multiply-add instead of a multiply and an add
                out = torch.addcmul(out, branch, self.gate.scale)
            else:
                out = self.gate(branch) + out
        elif out is x:
            out = out.clone()  # the post activation may be in place; never modify the caller's tensor
        if self.branch_bias is not None:
            out = out + self.branch_bias.view(1, -1, *([1] * (out.dim() - 2)))
        return self.post_act(out)
