"""Linear and embedding layers over GGUF weights kept quantized (the qgemm kernels' layout)."""

from __future__ import annotations

import torch
from torch import nn

from adaserve.kernels import qgemm
from adaserve.kernels.layout import PackedWeight, unpack_rows


class QuantLinear(nn.Module):
    """y = x @ w.T + b with w group-quantized (int4 or int8); x is quantized to int8 per 32 inputs.

    Each output row depends only on its own input row (see qgemm.cpp), so results do not change
    with the batch around them.
    """

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.int4 = packed.in_features, packed.out_features, packed.int4
        self.register_buffer("weight", packed.weight)
        self.register_buffer("scales", packed.scales)
        self.register_buffer("bias", None if bias is None else bias.float())
        self._ops = qgemm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()  # [num_tokens, in]
        out = self._ops.linear(flat, self.weight, self.scales, self.int4, False)  # [num_tokens, out]
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        kind = "int4" if self.int4 else "int8"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


class QuantEmbedding(nn.Module):
    """Rows of a packed weight, dequantized on lookup; shares the lm_head's tensors when tied."""

    def __init__(self, packed: PackedWeight) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.int4 = packed.out_features, packed.in_features, packed.int4
        self.register_buffer("weight", packed.weight)
        self.register_buffer("scales", packed.scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = unpack_rows(PackedWeight(self.weight, self.scales, self.int4), ids.reshape(-1))  # [n, hidden]
        return flat.view(*ids.shape, self.embedding_dim)
