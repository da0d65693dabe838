"""Read a GGUF file's tensors without dequantizing them to fp32.

4-bit block formats become the kernels' int4 layout with the file's own values: Q4_0 and Q4_1
directly, Q4_K with one scale and offset per 32-weight sub-block (d * sc and -dmin * m). Q8_0 becomes
int8 with its own scales, and so does Q5_0 (u = q, z = -16 d). Other formats (Q5_1, Q6_K, ...) are
dequantized by the gguf package and requantized to int8 with one scale per 32 weights; that step
rounds, so it is used only where the file holds none of those formats. Scales are stored as fp16,
so `d * sc` may round there.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, ReaderTensor
from gguf.quants import Q4_K, dequantize

from adaserve.kernels.layout import REQUANT_ROWS, PackedWeight, cat, pack, quantize_int8

INT4_TYPES = (QT.Q4_0, QT.Q4_1, QT.Q4_K)


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _split_nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] values: byte i holds element i (low) and i + 16 (high)."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _int4_parts(t: ReaderTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u [N, K] uint8, d and z [N, K / 32] fp32 with w = d * u + z."""
    rows = t.data.shape[0]
    if t.tensor_type == QT.Q4_K:  # per 256: d, dmin (fp16), 12 bytes of 6-bit scales and mins, 128 bytes
        blocks = t.data.reshape(-1, 144)
        d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])  # [B, 1]
        sc, mins = Q4_K.get_scale_min(blocks[:, 4:16])  # [B, 8] each
        qs = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        u = (qs & 15).reshape(-1, 8, 32)  # chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high
        scale, offset = d * sc.astype(np.float32), -dmin * mins.astype(np.float32)
    else:
        size = 18 if t.tensor_type == QT.Q4_0 else 20
        blocks = t.data.reshape(-1, size)
        scale, u = _f16(blocks[:, 0:2]), _split_nibbles(blocks[:, size - 16 :])
        offset = -8 * scale if t.tensor_type == QT.Q4_0 else _f16(blocks[:, 2:4])
    return u.reshape(rows, -1), scale.reshape(rows, -1), offset.reshape(rows, -1)


def _q8_0_parts(t: ReaderTensor) -> tuple[np.ndarray, np.ndarray]:
    blocks = t.data.reshape(-1, 34)
    d = _f16(blocks[:, 0:2])  # [B, 1]
    q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8)
    rows = t.data.shape[0]
    return (q.astype(np.int16) + 128).astype(np.uint8).reshape(rows, -1), d.reshape(rows, -1)


def _q5_0_parts(t: ReaderTensor) -> tuple[np.ndarray, np.ndarray]:
    """q [N, K] uint8 in 0..31 and d [N, K / 32] fp32 with w = d * (q - 16)."""
    blocks = t.data.reshape(-1, 22)  # per 32: fp16 d, 32 high bits (uint32), 16 bytes of nibbles
    high = np.ascontiguousarray(blocks[:, 2:6]).view(np.uint32) >> np.arange(32, dtype=np.uint32)  # [B, 32]
    q = _split_nibbles(blocks[:, 6:]) | ((high & 1).astype(np.uint8) << 4)
    rows = t.data.shape[0]
    return q.reshape(rows, -1), _f16(blocks[:, 0:2]).reshape(rows, -1)


def pack_tensor(t: ReaderTensor, row_order: np.ndarray | None = None) -> PackedWeight:
    """A 2-D GGUF weight [N, K] in the kernels' layout, rows reordered by `row_order` if given."""

    def rows(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a if row_order is None else a[row_order]))

    if t.tensor_type in INT4_TYPES:
        u, d, z = _int4_parts(t)
        return pack(rows(u), rows(d), rows(z), int4=True)
    if t.tensor_type == QT.Q8_0:
        u, d = _q8_0_parts(t)
        return pack(rows(u), rows(d), rows(-128 * d), int4=False)
    if t.tensor_type == QT.Q5_0:
        q, d = _q5_0_parts(t)
        return pack(rows(q), rows(d), rows(-16 * d), int4=False)
    # In row chunks: a whole fp32 copy of a 150k-row output head would be ~1 GB of transient memory.
    num_rows = t.data.shape[0]
    order = np.arange(num_rows) if row_order is None else row_order
    chunks = []
    for start in range(0, num_rows, REQUANT_ROWS):
        picked = t.data[order[start : start + REQUANT_ROWS]]
        values = dequantize(picked, t.tensor_type).reshape(len(picked), -1)
        chunks.append(quantize_int8(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))))
    return cat(chunks)


def dense_tensor(t: ReaderTensor) -> np.ndarray:
    """Any GGUF tensor as fp32, in its logical shape (rows first)."""
    values = dequantize(t.data, t.tensor_type)
    return values.reshape([int(n) for n in reversed(t.shape)]).astype(np.float32)


def llama_rope_row_order(num_rows: int, num_heads: int) -> np.ndarray:
    """llama.cpp stores Llama's q/k rows permuted for its rotary layout; this undoes it (as HF does).

    Within a head of 2 * half rows, GGUF row (i, two) holds HF row (two, i): for half = 2,
    GGUF rows 0, 1, 2, 3 are HF rows 0, 2, 1, 3, so HF row r comes from GGUF row order[r].
    """
    half = num_rows // num_heads // 2
    return np.arange(num_rows).reshape(num_heads, half, 2).swapaxes(1, 2).reshape(-1)


def open_gguf(path) -> dict[str, ReaderTensor]:
    return {t.name: t for t in GGUFReader(str(path)).tensors}
