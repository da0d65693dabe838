"""Our forward vs transformers' logits (fp32): prefill, decode, ragged batch, tree."""

import pytest
import torch

from adaserve.models.loader import load_model
from tests.factories import ForwardHarness, SeqInput

# fp32 summation order alone moves logits: on SmolLM2 (30 layers, logits of magnitude ~20) HF
# disagrees with itself by 6e-5 when one token is appended, and a tree row's logits differ from
# HF's by up to 2e-4 (measured, AVX2). A real bug (wrong mask, position, cache slot) moves them
# by more than 1e-2, so the deep model gets 5e-4 and the 2-layer tiny models keep 1e-4.
ATOL_BY_MODEL = {"smollm2": 5e-4, "tiny-llama": 1e-4, "tiny-qwen2": 1e-4}


@pytest.fixture(scope="module", params=["smollm2", "tiny-llama", "tiny-qwen2"])
def pair(request, smollm2_dir, tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    path = {"smollm2": smollm2_dir, "tiny-llama": tiny_model_dirs["llama"], "tiny-qwen2": tiny_model_dirs["qwen2"]}[
        request.param
    ]
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return load_model(path), hf, ATOL_BY_MODEL[request.param]


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0]  # [len, vocab]


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(100, 30000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill(pair):
    ours, hf, atol = pair
    ids = random_ids(21, 0)
    (logits,) = ForwardHarness(ours).forward([SeqInput("a", ids, list(range(len(ids))))])
    torch.testing.assert_close(logits, hf_logits(hf, ids), atol=atol, rtol=0)


def test_decode_after_prefill(pair):
    ours, hf, atol = pair
    ids = random_ids(14, 1)
    h = ForwardHarness(ours)
    h.forward([SeqInput("a", ids[:12], list(range(12)))])
    h.forward([SeqInput("a", ids[12:13], [12])])
    (logits,) = h.forward([SeqInput("a", ids[13:], [13])])
    torch.testing.assert_close(logits[0], hf_logits(hf, ids)[-1], atol=atol, rtol=0)


@pytest.mark.parametrize("min_waste,num_groups", [(10**6, 1), (100, 2), (0, 3)])
def test_ragged_batch_of_three(pair, min_waste, num_groups):
    """One step mixes a prefill chunk continuation, a fresh prefill and a decode token, attended
    as one padded group, as two (b alone; a and c, not adjacent in the batch) or one each."""
    ours, hf, atol = pair
    a, b, c = random_ids(15, 2), random_ids(17, 3), random_ids(7, 4)
    h = ForwardHarness(ours, min_waste=min_waste)
    h.forward([SeqInput("a", a[:10], list(range(10))), SeqInput("c", c[:6], list(range(6)))])
    out = h.forward(
        [
            SeqInput("a", a[10:], list(range(10, 15))),
            SeqInput("b", b, list(range(17))),
            SeqInput("c", c[6:], [6]),
        ]
    )
    torch.testing.assert_close(out[0], hf_logits(hf, a)[10:], atol=atol, rtol=0)
    torch.testing.assert_close(out[1], hf_logits(hf, b), atol=atol, rtol=0)
    torch.testing.assert_close(out[2], hf_logits(hf, c)[6:], atol=atol, rtol=0)
    assert h.num_groups[-1] == num_groups


def test_token_tree_with_custom_mask(pair):
    """Each tree node's logits equal HF's on context + the root->node path."""
    ours, hf, atol = pair
    context = random_ids(12, 5)
    parents = [-1, 0, 0, 1, 1, 2, 3, -1]  # two roots: node 7 is a sibling of node 0
    tokens = random_ids(len(parents), 6)
    paths, depth = [], []
    for i, p in enumerate(parents):
        paths.append((paths[p] if p >= 0 else []) + [i])
        depth.append(len(paths[-1]) - 1)
    mask = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for i, path in enumerate(paths):
        mask[i, path] = True
    h = ForwardHarness(ours)
    h.forward([SeqInput("a", context, list(range(12)))])
    (logits,) = h.forward([SeqInput("a", tokens, [12 + d for d in depth], mask)])
    for i, path in enumerate(paths):
        expected = hf_logits(hf, context + [tokens[j] for j in path])[-1]
        torch.testing.assert_close(logits[i], expected, atol=atol, rtol=0, msg=f"node {i}")
