"""The C++ fused ops (norm with residual add, rotary in place) against the torch code they replace."""

import pytest
import torch
import torch.nn.functional as F

from adaserve.kernels import qgemm
from adaserve.models.llama import Rotary, apply_rotary
from adaserve.models.loader import load_model
from tests.factories import ForwardHarness, SeqInput

HIDDEN, HEADS, KV_HEADS, DIM = 96, 4, 2, 32
ROWS = [0, 1, 3, 8, 40]  # 40 rows: split over threads (grain 8)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_rows", ROWS)
def test_rms_norm_matches_torch(num_rows):
    x, w = randn(num_rows, HIDDEN) * 3, randn(HIDDEN, seed=1)
    torch.testing.assert_close(qgemm().rms_norm(x, w, 1e-6), F.rms_norm(x, (HIDDEN,), w, 1e-6))


@pytest.mark.parametrize("num_rows", ROWS)
def test_add_rms_norm_updates_residual_and_x_in_place(num_rows):
    x, residual, w = randn(num_rows, HIDDEN), randn(num_rows, HIDDEN, seed=1), randn(HIDDEN, seed=2)
    total = x + residual
    qgemm().add_rms_norm_(x, residual, w, 1e-5)
    torch.testing.assert_close(residual, total, rtol=0, atol=0)  # one fp32 add: exact
    torch.testing.assert_close(x, F.rms_norm(total, (HIDDEN,), w, 1e-5))


@pytest.mark.parametrize("num_rows", ROWS)
def test_rotary_rotates_q_and_k_heads_and_leaves_v(num_rows):
    rotary = Rotary(DIM, 10000.0, 512)
    positions = torch.randint(0, 512, (num_rows,), generator=torch.Generator().manual_seed(3))
    cos, sin = rotary(positions)  # [num_rows, 1, DIM]
    qkv = randn(num_rows, (HEADS + 2 * KV_HEADS) * DIM)
    num_qk = (HEADS + KV_HEADS) * DIM
    expected = apply_rotary(qkv[:, :num_qk].view(num_rows, HEADS + KV_HEADS, DIM), cos, sin).reshape(num_rows, num_qk)
    v = qkv[:, num_qk:].clone()
    qgemm().rotary_(qkv, HEADS + KV_HEADS, DIM, cos, sin)
    torch.testing.assert_close(qkv[:, :num_qk], expected)
    assert torch.equal(qkv[:, num_qk:], v)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda: qgemm().rms_norm(randn(2, HIDDEN).double(), randn(HIDDEN), 1e-6), "fp32"),
        (lambda: qgemm().rms_norm(randn(2, HIDDEN), randn(HIDDEN + 1), 1e-6), "weight"),
        (lambda: qgemm().add_rms_norm_(randn(2, HIDDEN), randn(3, HIDDEN), randn(HIDDEN), 1e-6), "rows"),
        (lambda: qgemm().rotary_(randn(2, DIM), 2, DIM, randn(2, DIM), randn(2, DIM)), "heads"),
        (lambda: qgemm().rotary_(randn(2, 2 * DIM), 2, DIM, randn(3, DIM), randn(2, DIM)), "cos"),
    ],
)
def test_bad_shapes_are_refused(bad, message):
    with pytest.raises(RuntimeError, match=message):
        bad()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_model_on_the_fused_ops_matches_the_torch_path(tiny_model_dirs, arch):
    """Prefill then a 3-token tree step, fused vs unfused: the same logits up to fp32 rounding."""
    outputs = []
    for fused in (False, True):
        model = load_model(tiny_model_dirs[arch], packed_linear=False)
        if fused:
            model.use_fused_ops()
        harness = ForwardHarness(model)
        prompt = harness.forward([SeqInput("a", list(range(5, 17)), list(range(12)))])[0]
        tree = torch.tensor([[True, False, False], [True, True, False], [True, False, True]])
        step = harness.forward([SeqInput("a", [3, 4, 5], [12, 13, 13], tree), SeqInput("b", [7, 8], [0, 1])])
        outputs.append(torch.cat([prompt, *step]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_rows", ROWS)
def test_silu_mul_is_the_torch_path_bit_for_bit(num_rows):
    gate_up = randn(num_rows, 2 * HIDDEN)
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(qgemm().silu_mul(gate_up), F.silu(gate) * up)
