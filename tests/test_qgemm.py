"""The quantized CPU kernels: layout, SIMD vs plain C++, accuracy, batch invariance, GGUF decoding."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from adaserve.kernels import cpu_flags, qgemm
from adaserve.kernels.layout import (
    cat,
    pack,
    quantize_int4,
    quantize_int8,
    requantize_int4,
    to_int8,
    unpack,
    unpack_rows,
)
from adaserve.models.attention import SeqSpec
from adaserve.models.gguf_weights import llama_rope_row_order, pack_tensor
from adaserve.models.key_lists import build_key_lists


def random_int4(num_out=64, num_in=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 16, (num_out, num_in), dtype=torch.uint8, generator=g)
    d = torch.rand(num_out, num_in // 32, generator=g) * 0.02
    z = -torch.rand(num_out, num_in // 32, generator=g) * 0.1
    return pack(u, d, z, int4=True), u, d, z


def run(pw, x, scalar=False):
    return qgemm().linear(x, pw.weight, pw.scales, pw.int4, scalar)


def test_pack_unpack_roundtrip_with_fp16_scales():
    pw, u, d, z = random_int4()
    expected = u.float().view(64, 3, 32) * d.half().float()[..., None] + z.half().float()[..., None]
    assert torch.equal(unpack(pw), expected.view(64, 96))
    rows = torch.tensor([5, 0, 63, 17])
    assert torch.equal(unpack_rows(pw, rows), expected.view(64, 96)[rows])
    assert torch.equal(unpack(to_int8(pw)), unpack(pw))  # int4 -> int8 layout is exact


def test_cat_promotes_to_int8_when_parts_differ():
    a, _, _, _ = random_int4(32, 64, seed=1)
    b = quantize_int8(torch.randn(16, 64))
    fused = cat([a, b])
    assert not fused.int4 and fused.out_features == 48
    assert torch.equal(unpack(fused), torch.cat([unpack(a), unpack(b)]))


def weights(kind: str, num_out: int = 48):
    """int4; int8 from fp32 (u in 1..255); int4 promoted to int8 as `cat` does (u in 0..15: the
    signed weight -128 occurs, which the AVX2 sign trick once got wrong)."""
    if kind == "int4":
        return random_int4(num_out)[0]
    if kind == "int8":
        return quantize_int8(torch.randn(num_out, 96, generator=torch.Generator().manual_seed(num_out)))
    return to_int8(random_int4(num_out, seed=5)[0])


KINDS = ["int4", "int8", "int4_as_int8"]


@pytest.mark.parametrize("num_out", [64, 48])  # 48: an odd number of 16-column blocks
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_rows", [1, 3, 8, 13, 20])
def test_simd_equals_plain_cpp_and_tracks_the_fp32_product(kind, num_rows, num_out):
    pw = weights(kind, num_out)
    x = torch.randn(num_rows, 96, generator=torch.Generator().manual_seed(num_rows))
    y = run(pw, x)
    assert torch.equal(y, run(pw, x, scalar=True))
    reference = x @ unpack(pw).t()
    assert ((y - reference).norm() / reference.norm()) < 0.02  # int8 activations: ~0.5 % here


def test_each_row_is_independent_of_the_batch():
    pw = random_int4(128, 256)[0]
    x = torch.randn(19, 256)
    y = run(pw, x)
    for i in (0, 7, 8, 18):
        assert torch.equal(run(pw, x[i : i + 1])[0], y[i])
    assert torch.equal(run(pw, x[5:14]), y[5:14])


def test_zero_rows_and_zero_inputs():
    pw = random_int4()[0]
    assert run(pw, torch.zeros(0, 96)).shape == (0, 64)
    # x = 0: every group scale is 0, the output is exactly 0
    assert torch.equal(run(pw, torch.zeros(2, 96)), torch.zeros(2, 64))


def _reader_tensor(values: np.ndarray, qtype: QT) -> SimpleNamespace:
    data = quantize(values, qtype)
    return SimpleNamespace(data=data, tensor_type=qtype, shape=list(reversed(values.shape)))


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q8_0])
def test_gguf_blocks_keep_their_values(qtype):
    values = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    t = _reader_tensor(values, qtype)
    expected = dequantize(t.data, qtype).reshape(32, 256)
    # Q4_0 / Q5_0 / Q8_0 keep the file's fp16 scale exactly; Q4_1's offset too.
    assert torch.equal(unpack(pack_tensor(t)), torch.from_numpy(expected))


def test_gguf_q4_k_up_to_the_rounding_of_its_scales():
    rng = np.random.default_rng(1)
    num_rows, num_blocks = 16, 2  # rows of 512 weights: two 256-weight super-blocks
    blocks = rng.integers(0, 256, size=(num_rows * num_blocks, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.array([0.01], dtype=np.float16).view(np.uint8)  # d, dmin: finite fp16
    blocks[:, 2:4] = np.array([0.004], dtype=np.float16).view(np.uint8)
    t = SimpleNamespace(data=blocks.reshape(num_rows, -1), tensor_type=QT.Q4_K, shape=[512, num_rows])
    expected = torch.from_numpy(dequantize(t.data, QT.Q4_K).reshape(num_rows, 512))
    got = unpack(pack_tensor(t))
    # d * sc and dmin * m are stored as fp16 (11-bit mantissa): |error| <= 2^-11 (15 |d sc| + |dmin m|),
    # below 5e-3 for these scales (d sc <= 0.63, dmin m <= 0.25), on weights up to ~9.5.
    assert (got - expected).abs().max() < 5e-3


def test_requantized_formats_stay_close():
    values = np.random.default_rng(2).standard_normal((32, 256)).astype(np.float32)
    t = _reader_tensor(values, QT.Q5_1)
    expected = torch.from_numpy(dequantize(t.data, QT.Q5_1).reshape(32, 256))
    got = unpack(pack_tensor(t))
    assert ((got - expected).norm() / expected.norm()) < 0.01


def test_int4_quantization_is_within_half_a_step_and_exact_on_its_grid():
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(3))
    pw = quantize_int4(w)
    assert pw.int4
    d = pw.scales[:, :, 0].float()  # [N / 16, K / 32, 16]: the step of each column's group
    step = d.permute(0, 2, 1).reshape(48, 3).repeat_interleave(32, dim=1)  # [N, K]
    assert ((unpack(pw) - w).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(unpack(quantize_int4(unpack(pw))), unpack(pw))  # its own values come back


def test_requantizing_int8_to_int4_keeps_shape_and_stays_close_in_row_chunks(monkeypatch):
    import adaserve.kernels.layout as layout

    monkeypatch.setattr(layout, "REQUANT_ROWS", 32)  # several chunks, one of them short
    w = torch.randn(80, 64, generator=torch.Generator().manual_seed(4))
    int8 = quantize_int8(w)
    int4 = requantize_int4(int8)
    assert int4.int4 and (int4.out_features, int4.in_features) == (80, 64)
    assert torch.equal(unpack(int4), unpack(quantize_int4(unpack(int8))))
    assert ((unpack(int4) - w).norm() / w.norm()) < 0.15  # 4 bits: ~0.1 relative error on Gaussians
    assert requantize_int4(int4) is int4


def test_llama_row_order_matches_transformers_reverse_permute():
    rows, heads = 24, 3
    w = np.arange(rows * 2).reshape(rows, 2)
    dim = rows // heads // 2
    hf = w.reshape(heads, dim, 2, 2).swapaxes(2, 1).reshape(rows, 2)  # transformers' reverse_permute
    assert np.array_equal(w[llama_rope_row_order(rows, heads)], hf)


# Each build: its name, compiler flags, the ISA it reports, and the CPU flag it needs to run.
BUILDS = {
    "avx2": (["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"], "avx2", "avx2"),
    "portable": (["-O3", "-fopenmp"], "scalar", None),  # x86-64 baseline: every loop is plain C++
}


@pytest.mark.parametrize("build", BUILDS)
def test_a_build_for_another_isa_gives_the_same_bits(tmp_path, build):
    """The default build runs one ISA's code only: build the others on purpose and compare."""
    from torch.utils.cpp_extension import load

    from adaserve.kernels import SOURCES

    flags, isa, needs = BUILDS[build]
    if needs and needs not in cpu_flags():
        pytest.skip(f"no {needs}")
    sources = [str(s) for s in SOURCES]
    ops = load(f"qgemm_{build}_test", sources, flags, extra_ldflags=["-fopenmp"], build_directory=str(tmp_path))
    assert ops.isa() == isa
    for pw in (weights(kind) for kind in KINDS):
        x = torch.randn(13, 96)
        y = ops.linear(x, pw.weight, pw.scales, pw.int4, False)
        assert torch.equal(y, ops.linear(x, pw.weight, pw.scales, pw.int4, True))
        assert torch.equal(y, run(pw, x, scalar=True))  # and equal to the default build's plain path
    # Every build's attention (AVX-512, AVX2, plain C++) does the same additions in the same order.
    g = torch.Generator().manual_seed(3)
    k_cache, v_cache = torch.randn(40, 2, 128, generator=g), torch.randn(40, 2, 128, generator=g)
    q = torch.randn(9, 12, 128, generator=g)
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    seqs = [SeqSpec([0, 1, 2], list(range(20, 26)), 7), SeqSpec([3, 4], [30, 31, 32], 5, tree)]
    keys = build_key_lists(seqs, 4, "cpu")
    args = (keys.token_seq, keys.base_offsets, keys.base_slots, keys.extra_offsets, keys.extra_slots, 0.1)
    expected = qgemm().paged_attention(q, k_cache, v_cache, *args)
    assert torch.equal(ops.paged_attention(q, k_cache, v_cache, *args), expected)
