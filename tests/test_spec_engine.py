"""Speculative decoding in the engine: greedy output equals plain greedy for every policy and
proposer; sampling keeps the target's distribution end to end; KV and stats stay consistent."""

import pytest
import torch

from adaserve import LLM, SamplingParams
from adaserve.sim.recorder import OfferRecorder
from tests.factories import chi_square_pvalue

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village, there lived",
    "1, 2, 3, 4, 5, 6,",
    "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
]
POLICIES = ["chain:4", "static-tree", "dynamic-tree:12:5:3"]


def run(model_dir, prompts, max_tokens=48, **spec):
    llm = LLM(str(model_dir), max_num_batched_tokens=256, **spec)
    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens))
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.pool.num_blocks  # nothing leaked
    if llm.engine.spec is not None and spec.get("draft") != "ngram":
        draft_kv = llm.engine.spec.proposer.kv
        assert draft_kv.num_free_blocks == draft_kv.pool.num_blocks
    return llm, [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def smollm2_plain(smollm2_dir):
    return run(smollm2_dir, PROMPTS)[1]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "draft",
    # self-draft: the target's own weights (not requantized to int4, the default for a GGUF draft)
    [dict(draft="smollm2-135m", draft_int4=False), dict(draft="smollm2-135m", draft_num_layers=3), dict(draft="ngram")],
    ids=["self-draft", "weak-draft", "ngram"],
)
def test_smollm2_greedy_speculation_equals_plain_greedy(smollm2_dir, smollm2_plain, policy, draft):
    llm, outs = run(smollm2_dir, PROMPTS, spec_policy=policy, **draft)
    assert outs == smollm2_plain
    stats = llm.engine.spec.stats.totals
    assert stats.num_verifications > 0
    if draft.get("draft_num_layers") is None and draft["draft"] != "ngram":
        # The target as its own draft: the first drafted token matches the target's argmax
        # (barring fp near-ties between batch shapes).
        assert stats.accepted_per_depth[0] >= 0.95 * stats.num_verifications
    elif draft["draft"] != "ngram":
        assert stats.acceptance_rate < 0.9  # a weak draft: rejections really happen


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("draft_kind", ["self", "one-layer", "other-random-model", "ngram"])
def test_tiny_models_greedy_speculation_equals_plain_greedy(tiny_model_dirs, arch, policy, draft_kind):
    target = tiny_model_dirs[arch]
    other = tiny_model_dirs["qwen2" if arch == "llama" else "llama"]
    draft = {
        "self": dict(draft=str(target)),
        "one-layer": dict(draft=str(target), draft_num_layers=1),
        "other-random-model": dict(draft=str(other)),
        "ngram": dict(draft="ngram"),
    }[draft_kind]
    _, plain = run(target, PROMPTS[:4], max_tokens=24)
    llm, outs = run(target, PROMPTS[:4], max_tokens=24, spec_policy=policy, **draft)
    assert outs == plain


def test_speculation_survives_preemption(smollm2_dir, smollm2_plain):
    from adaserve.models.loader import read_model_config

    per_token = read_model_config(smollm2_dir).kv_bytes_per_token()
    llm = LLM(
        str(smollm2_dir), block_size=4, kv_cache_memory=40 * 4 * per_token, draft="smollm2-135m", spec_policy="chain:4"
    )
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=48))
    assert [o.token_ids for o in outs] == smollm2_plain
    assert sum(o.num_preemptions for o in outs) > 0


def test_mismatched_draft_vocabulary_is_a_clear_error(tmp_path, smollm2_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(tmp_path))
    cfg = LlamaConfig(vocab_size=3, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="vocabulary"):
        LLM(str(smollm2_dir), draft=str(tmp_path), spec_policy="chain:2")


def test_speculation_needs_a_draft(smollm2_dir):
    with pytest.raises(ValueError, match="needs a draft"):
        LLM(str(smollm2_dir), spec_policy="chain:2")


def test_stats_are_recorded_per_request_and_step(smollm2_dir):
    llm = LLM(str(smollm2_dir), draft="smollm2-135m", draft_num_layers=6, spec_policy="dynamic-tree:8:4:2")
    engine = llm.engine
    recorder = OfferRecorder()
    engine.add_spec_observer(recorder)
    requests = [engine.add_request(p, SamplingParams(max_tokens=24)) for p in PROMPTS]
    while engine.has_unfinished:
        engine.step()
    totals = engine.spec.stats.totals
    assert totals.num_accepted == sum(r.spec_stats.num_accepted for r in requests)
    assert totals.num_proposed == sum(s.num_proposed for s in engine.spec.stats.steps)
    assert totals.num_accepted == sum(s.num_accepted for s in engine.spec.stats.steps)
    assert sum(totals.accepted_per_depth) == totals.num_accepted
    assert len(recorder.calibration) == totals.num_proposed
    for r in requests:  # every output token came from a verification: accepted drafts + one bonus
        s = r.spec_stats
        assert s.num_accepted + s.num_verifications >= r.num_output_tokens - 1
    assert 1.0 <= totals.mean_accepted_tokens <= 5.0
    offers = recorder.offers  # the simulator's acceptance records
    assert len(offers) >= totals.num_verifications - sum(1 for r in requests if r.spec_stats.num_proposed == 0)
    for o in offers:
        assert 1 <= len(o.draft_probs) <= 2 and o.draft_probs == sorted(o.draft_probs, reverse=True)
        assert -1 <= o.hit < len(o.draft_probs) and o.depth >= 0
    # Every accepted node was offered at its parent, whose record therefore has a hit.
    assert sum(o.hit >= 0 for o in offers) >= totals.num_accepted


def test_offer_records_name_the_output_position_they_predict(smollm2_dir):
    """One request: the prefill gives output token 0, every step's root predicts the next one, its
    path's records follow, and after a rejection (hit -1, a bonus token) the next step predicts the
    position after it."""
    llm = LLM(str(smollm2_dir), draft="smollm2-135m", draft_num_layers=6, spec_policy="dynamic-tree:8:4:2")
    recorder = OfferRecorder()
    llm.engine.add_spec_observer(recorder)
    llm.generate([PROMPTS[0]], SamplingParams(max_tokens=24))
    positions = [o.position for o in recorder.offers]
    assert positions[0] == 1 and positions == sorted(set(positions)) and positions[-1] < 24
    for o, after in zip(recorder.offers, positions[1:]):
        if o.hit == -1:
            assert after == o.position + 1


def test_offer_records_of_a_self_draft_always_hit_the_top_child(smollm2_dir):
    """Draft = target, greedy: the target's choice is the draft's most likely child."""
    llm = LLM(str(smollm2_dir), draft="smollm2-135m", draft_int4=False, spec_policy="dynamic-tree:6:3:3")
    recorder = OfferRecorder()
    llm.engine.add_spec_observer(recorder)
    llm.generate(PROMPTS[:2], SamplingParams(max_tokens=16))
    offers = recorder.offers
    assert len(offers) > 10
    assert sum(o.hit == 0 for o in offers) >= 0.95 * len(offers)
    assert {o.depth for o in offers} > {0}
    off = recorder.off_path_offers  # below the children the target did not pick
    assert len(off) > 0 and all(o.off_path and o.hit == -1 and o.position == -1 and o.depth >= 1 for o in off)


def test_an_observer_sees_only_the_verifications_after_it_is_attached(smollm2_dir):
    """The engine records no traces itself (what `adaserve serve` runs); `simulate record` attaches
    an observer, which sees every verified tree from then on."""
    llm = LLM(str(smollm2_dir), draft="smollm2-135m", spec_policy="dynamic-tree:6:3:3")
    llm.generate(PROMPTS[:1], SamplingParams(max_tokens=8))
    totals = llm.engine.spec.stats.totals
    before = totals.num_proposed
    assert totals.num_verifications > 0 and before > 0
    recorder = OfferRecorder()
    llm.engine.add_spec_observer(recorder)
    llm.generate(PROMPTS[1:2], SamplingParams(max_tokens=8))
    assert len(recorder.calibration) == totals.num_proposed - before > 0


def exact_three_token_distribution(model_dir, prompt_ids, top_k):
    """P(t1, t2, t3) of the target with temperature 1 and top_k, from transformers' logits."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def next_probs(ids):
        with torch.inference_mode():
            logits = hf(torch.tensor([ids])).logits[0, -1]
        top = logits.topk(top_k)
        return dict(zip(top.indices.tolist(), top.values.softmax(-1).tolist()))

    dist = {}
    for a, pa in next_probs(prompt_ids).items():
        for b, pb in next_probs(prompt_ids + [a]).items():
            for c, pc in next_probs(prompt_ids + [a, b]).items():
                dist[(a, b, c)] = pa * pb * pc
    return dist


def test_sampled_speculation_keeps_the_target_distribution(tiny_model_dirs):
    """Tiny random target, its first layer as draft (so rejections happen), a static tree of
    two children per node while the target samples among three (top_k=3), so bonus tokens are
    often off the tree: the empirical joint of the first three tokens vs the exact one."""
    target = tiny_model_dirs["llama"]
    prompt_ids, top_k, n = [500, 600, 700], 3, 3000
    exact = exact_three_token_distribution(target, prompt_ids, top_k)
    llm = LLM(
        str(target),
        draft=str(target),
        draft_num_layers=1,
        spec_policy="static-tree:2,2",
        max_num_seqs=128,
        max_num_batched_tokens=2048,
    )
    params = [SamplingParams(max_tokens=3, temperature=1.0, top_k=top_k, seed=s, ignore_eos=True) for s in range(n)]
    outs = llm.generate([prompt_ids] * n, params)
    counts = {}
    for o in outs:
        counts[tuple(o.token_ids)] = counts.get(tuple(o.token_ids), 0) + 1
    assert set(counts) <= set(exact)
    assert llm.engine.spec.stats.totals.num_accepted > 0.05 * n  # drafts were accepted and rejected
    assert llm.engine.spec.stats.totals.acceptance_rate < 0.9
    cells = list(exact)
    assert chi_square_pvalue([counts.get(c, 0) for c in cells], [exact[c] for c in cells]) > 1e-3


def test_switching_policy_between_requests(smollm2_dir, smollm2_plain):
    llm = LLM(str(smollm2_dir), max_num_batched_tokens=256, draft="smollm2-135m", spec_policy="static-tree")
    for policy in ["none", "chain:4", "dynamic-tree:12:5:3", "static-tree"]:
        llm.engine.set_spec_policy(policy)
        assert (llm.engine.spec is None) == (policy == "none")
        outs = llm.generate(PROMPTS[:2], SamplingParams(max_tokens=48))
        assert [o.token_ids for o in outs] == smollm2_plain[:2], policy
    with pytest.raises(ValueError, match="sized for"):
        llm.engine.set_spec_policy("static-tree:4,4,4")
    llm.engine.add_request(PROMPTS[0], SamplingParams(max_tokens=4))
    with pytest.raises(RuntimeError, match="in flight"):
        llm.engine.set_spec_policy("none")


def test_step_log_traces_every_pass_in_the_cost_models_terms(smollm2_dir, tmp_path):
    from adaserve.engine.step_log import read_step_log

    path = tmp_path / "steps.jsonl"
    llm = LLM(
        str(smollm2_dir), draft="smollm2-135m", draft_num_layers=6, spec_policy="dynamic-tree:8:4:2", step_log=str(path)
    )
    engine = llm.engine
    for p in PROMPTS:
        engine.add_request(p, SamplingParams(max_tokens=16))
    while engine.has_unfinished:
        engine.step()
    steps, stats = read_step_log(path), engine.spec.stats.steps
    assert len(steps) == len(stats) > 1  # one line per step that ran (start-up profiling is not traced)
    first = [p for p in steps[0].passes if p.model == "target"]
    assert first[0].num_context_tokens == first[0].num_context_pairs == 0  # prompts from an empty cache
    for logged, s in zip(steps, stats):
        target = [p for p in logged.passes if p.model == "target"]
        assert len(target) == 1 and target[0].num_seqs == s.num_requests
        assert target[0].num_tokens == s.num_prefill_tokens + s.num_verified_tokens
        if s.num_proposed:  # trees were drafted, and the target computed logits of every node
            assert any(p.model == "draft" for p in logged.passes)
            assert target[0].num_logit_rows >= s.num_verified_tokens
        if s.num_prefill_tokens == 0:  # decodes only: each reads its sequence's cached tokens
            assert target[0].num_context_tokens >= target[0].num_seqs
        assert logged.policy == "dynamic-tree:8:4:2"
        assert logged.step_ms >= sum(p.forward_ms + p.logits_ms for p in logged.passes) > 0
