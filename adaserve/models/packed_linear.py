"""oneDNN packed-weight linear layers for CPU.

For the small token counts of decode and verification, a linear layer whose weight is reordered
once into oneDNN's blocked layout runs 2-4x faster here than the default MKL path (measured on
this machine's Zen 3: lm_head 576->49152 at 1 token: 10.1 ms -> 4.7 ms). Only used on CPU.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def cpu_packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_linears(module: nn.Module) -> None:
    """Replace every fp32 nn.Linear under `module` (on CPU) by a PackedLinear, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.weight.device.type == "cpu":
            if child.weight.dtype == torch.float32:
                setattr(module, name, PackedLinear(child))
        else:
            pack_linears(child)
