"""The qgemm weight layout: pack group-quantized weights, and read them back.

A weight is `w[n, k] = d[n, g] * u[n, k] + z[n, g]` with g = k // 32, u in 0..15 (int4) or 0..255
(int8). The kernel reads 16 output columns at a time and, per group, 8 quads of 4 inputs (see
qgemm.cpp). Worked example, int8, column block 0, group 0: byte 64 * j + 4 * col + kk holds
u[col, 4 * j + kk], so byte 70 = 64 * 1 + 4 * 1 + 2 holds u[1, 6].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLS, GROUP = 16, 32


@dataclass
class PackedWeight:
    weight: torch.Tensor  # uint8 [N / 16, K / 32, 256 (int4) or 512 (int8)]
    scales: torch.Tensor  # fp16 [N / 16, K / 32, 2, 16]: d then z per column
    int4: bool

    @property
    def out_features(self) -> int:
        return self.weight.shape[0] * COLS

    @property
    def in_features(self) -> int:
        return self.weight.shape[1] * GROUP


def pack(u: torch.Tensor, d: torch.Tensor, z: torch.Tensor, int4: bool) -> PackedWeight:
    """u uint8 [N, K]; d, z [N, K / 32] (any float dtype; stored as fp16)."""
    num_out, num_in = u.shape
    if num_out % COLS or num_in % GROUP:
        raise ValueError(f"weight [{num_out}, {num_in}] is not a multiple of [{COLS}, {GROUP}]")
    if int4 and int(u.max()) > 15:
        raise ValueError("int4 values must be in 0..15")
    nb, ng = num_out // COLS, num_in // GROUP
    # [nb, col, g, j, kk] -> [nb, g, j, col, kk]: one 64-byte chunk per quad j
    quads = u.view(nb, COLS, ng, 8, 4).permute(0, 2, 3, 1, 4).reshape(nb, ng, 8, 64)
    if int4:  # chunk c: quad 2c in the low nibbles, quad 2c + 1 in the high ones
        quads = quads[:, :, 0::2] | (quads[:, :, 1::2] << 4)
    weight = quads.reshape(nb, ng, -1).contiguous()
    scales = torch.stack([d, z], dim=-1).view(nb, COLS, ng, 2).permute(0, 2, 3, 1)  # [nb, g, 2, col]
    return PackedWeight(weight, scales.to(torch.float16).contiguous(), int4)


def unpack_rows(pw: PackedWeight, rows: torch.Tensor) -> torch.Tensor:
    """The dequantized fp32 weights of output rows `rows` ([T] int64) -> [T, K]. Embeddings use it."""
    nb, ng, _ = pw.weight.shape
    block, col = rows // COLS, rows % COLS
    if pw.int4:
        packed = pw.weight.view(nb, ng, 4, COLS, 4)[block, :, :, col]  # [T, g, c, kk]
        u = torch.stack([packed & 15, packed >> 4], dim=3)  # [T, g, c, 2, kk]: quads 2c, 2c + 1
    else:
        u = pw.weight.view(nb, ng, 8, COLS, 4)[block, :, :, col]  # [T, g, j, kk]
    scales = pw.scales[block, :, :, col].float()  # [T, g, 2]
    u = u.reshape(len(rows), ng, GROUP).float()
    return (u * scales[..., :1] + scales[..., 1:]).reshape(len(rows), -1)


def unpack(pw: PackedWeight) -> torch.Tensor:
    """All weights, fp32 [N, K] (tests and the fp32 reference)."""
    return unpack_rows(pw, torch.arange(pw.out_features))


def to_int8(pw: PackedWeight) -> PackedWeight:
    """The same values in the int8 layout (exact: u and the scales are unchanged)."""
    if not pw.int4:
        return pw
    nb, ng, _ = pw.weight.shape
    packed = pw.weight.view(nb, ng, 4, 64)
    quads = torch.stack([packed & 15, packed >> 4], dim=3).reshape(nb, ng, 512)
    return PackedWeight(quads.contiguous(), pw.scales, int4=False)


def cat(parts: list[PackedWeight]) -> PackedWeight:
    """Concatenate along the output features (fused q/k/v, gate/up); int4 only if every part is."""
    if not all(p.int4 for p in parts):
        parts = [to_int8(p) for p in parts]
    return PackedWeight(torch.cat([p.weight for p in parts]), torch.cat([p.scales for p in parts]), int4=parts[0].int4)


def quantize_int8(w: torch.Tensor) -> PackedWeight:
    """fp32 [N, K] -> int8 with one fp16 scale per group of 32: d = amax / 127, u = round(w / d) + 128."""
    num_out, num_in = w.shape
    groups = w.float().view(num_out, num_in // GROUP, GROUP)
    d = (groups.abs().amax(dim=-1) / 127).to(torch.float16).float()  # the scale as stored
    q = torch.where(d[..., None] > 0, groups / d[..., None], 0).round().clamp(-127, 127)
    u = (q + 128).to(torch.uint8).view(num_out, num_in)
    return pack(u, d, -128 * d, int4=False)


def quantize_int4(w: torch.Tensor) -> PackedWeight:
    """fp32 [N, K] -> int4 with one fp16 scale and offset per group of 32 (min to max in 15 steps):
    d = (max - min) / 15, z = min, u = round((w - z) / d). Worked example: a group spanning -0.3
    to 1.2 -> d = 0.1, z = -0.3; w = 0.46 -> u = round(7.6) = 8, read back as 0.5."""
    num_out, num_in = w.shape
    groups = w.float().view(num_out, num_in // GROUP, GROUP)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    d = ((hi - lo) / 15).to(torch.float16).float()  # the scale and offset as stored
    z = lo.to(torch.float16).float()
    q = torch.where(d[..., None] > 0, (groups - z[..., None]) / d[..., None], 0).round().clamp(0, 15)
    return pack(q.to(torch.uint8).view(num_out, num_in), d, z, int4=True)


REQUANT_ROWS = 4096  # rows per step (a multiple of COLS): a whole 150k-row head in fp32 is ~0.5-1 GB


def requantize_int4(pw: PackedWeight) -> PackedWeight:
    """The same matrix as int4 (lossy for an int8 one: a draft model's cheaper weights; the draft
    only steers which tokens are proposed, the target's verification keeps the output exact)."""
    if pw.int4:
        return pw
    rows = torch.arange(pw.out_features)
    chunks = [quantize_int4(unpack_rows(pw, rows[i : i + REQUANT_ROWS])) for i in range(0, len(rows), REQUANT_ROWS)]
    return cat(chunks)
