"""Structured output (xgrammar): the tree masks against a path-by-path oracle, 50 random JSON
schemas whose outputs parse and validate and are the same with speculation as without, regex and
choice constraints, and sampling under a grammar that keeps the target's distribution."""

import json
import random

import jsonschema
import pytest
import torch

from adaserve import LLM, SamplingParams
from adaserve.engine.grammar import GrammarCompiler, apply_bitmask
from adaserve.sampling import StructuredOutput
from tests.factories import chi_square_pvalue

xgr = pytest.importorskip("xgrammar")


@pytest.fixture(scope="module")
def compiler(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    return GrammarCompiler(tokenizer, 49152, [tokenizer.eos_token_id]), tokenizer


def allowed(bitmask_row: torch.Tensor) -> set[int]:
    logits = apply_bitmask(torch.zeros(1, 49152), bitmask_row[None])
    return set((logits[0] == 0).nonzero().flatten().tolist())


def test_tree_masks_equal_the_grammar_after_each_path(compiler):
    """The docstring's example of adaserve.engine.grammar: root -> '"' -> 'a', root -> 'x'."""
    grammars, tok = compiler
    state = grammars.state(StructuredOutput("json_object"))
    brace, quote, a, x = (tok.encode(s, add_special_tokens=False)[0] for s in ("{", '"', "a", "x"))
    state.accept([brace])
    token_ids, parents = [brace, quote, a, x], [-1, 0, 1, 0]
    tree = state.tree_bitmask(token_ids, parents)
    paths = state.paths_bitmask([[], [quote], [quote, a], [x]])
    for node in (0, 1, 2):
        assert allowed(tree[node]) == allowed(paths[node]) and 0 < len(allowed(tree[node])) < 49152
    assert quote in allowed(tree[0]) and a in allowed(tree[1]) and x in allowed(tree[2])
    assert x not in allowed(tree[0]) and len(allowed(tree[3])) == 49152  # off the grammar: unmasked
    assert tree.shape == (4, 49152 // 32) and state.tree_bitmask([5], [-1]).shape == (1, 1536)


@pytest.mark.parametrize(
    "spec, needle",
    [
        (StructuredOutput("json_schema", "{not json"), "invalid json_schema"),
        (StructuredOutput("regex", "(unclosed"), "invalid regex"),
        (StructuredOutput("grammar", "root ::= undefined_rule"), "invalid grammar"),
    ],
)
def test_a_bad_constraint_is_a_value_error(compiler, spec, needle):
    with pytest.raises(ValueError, match=needle):
        compiler[0].compile(spec)


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """An object schema of 1-4 required properties; values small enough to finish in 160 tokens."""
    kinds = ["integer", "boolean", "enum", "string", "array"] + (["object"] if depth < 1 else [])
    properties = {}
    for i in range(rng.randint(1, 4)):
        kind = rng.choice(kinds)
        name = rng.choice(["id", "name", "age", "ok", "tags", "color", "size", "info", "count"]) + str(i)
        if kind == "integer":
            properties[name] = {"type": "integer", "minimum": 0, "maximum": rng.choice([9, 99, 999])}
        elif kind == "enum":
            properties[name] = {"enum": rng.sample(["red", "green", "blue", "small", "large", "yes", "no"], 3)}
        elif kind == "string":
            properties[name] = {"type": "string", "minLength": 1, "maxLength": rng.choice([5, 10, 16])}
        elif kind == "array":
            item = rng.choice([{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}])
            properties[name] = {"type": "array", "items": item, "minItems": 1, "maxItems": 3}
        elif kind == "object":
            properties[name] = random_schema(rng, depth + 1)
        else:
            properties[name] = {"type": kind}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def test_50_random_schemas_validate_and_speculation_changes_nothing(smollm2_dir):
    rng = random.Random(21)
    schemas = [random_schema(rng) for _ in range(50)]
    prompts = [f"A record with the fields {', '.join(s['properties'])}, as JSON:\n" for s in schemas]
    params = [
        SamplingParams(max_tokens=160, structured=StructuredOutput("json_schema", json.dumps(s))) for s in schemas
    ]
    config = dict(max_num_seqs=50, max_num_batched_tokens=2048)
    plain = LLM(str(smollm2_dir), **config).generate(prompts, params)
    llm = LLM(str(smollm2_dir), draft=str(smollm2_dir), draft_num_layers=3, spec_policy="dynamic-tree:12:5:3", **config)
    spec = llm.generate(prompts, params)
    for schema, p, s in zip(schemas, plain, spec):
        assert p.finish_reason.value == "stop", (json.dumps(schema), repr(p.text))
        jsonschema.validate(json.loads(p.text), schema)
        assert s.token_ids == p.token_ids
    assert llm.engine.spec.stats.totals.num_accepted > 0


@pytest.mark.parametrize(
    "spec, check",
    [
        (StructuredOutput("regex", r"[0-9]{3}-[0-9]{4}"), lambda t: len(t) == 8 and t[3] == "-"),
        (StructuredOutput("choice", choices=("yes", "no", "it depends")), lambda t: t in ("yes", "no", "it depends")),
        (StructuredOutput("grammar", 'root ::= "(" [a-z]+ ")"'), lambda t: t[0] == "(" and t[-1] == ")"),
        (StructuredOutput("json_object"), lambda t: isinstance(json.loads(t), dict)),
    ],
    ids=["regex", "choice", "grammar", "json_object"],
)
def test_regex_choice_and_grammar_constrain_greedy_and_sampled_output(smollm2_dir, spec, check):
    llm = LLM(str(smollm2_dir), draft="ngram", spec_policy="chain:4")
    prompts = ["Call me at", "Is the sky green? Answer:", "Name an animal in brackets:"]
    params = [SamplingParams(max_tokens=120, structured=spec)]
    params += [SamplingParams(max_tokens=120, structured=spec, temperature=1.0, seed=s) for s in range(2)]
    outs = llm.generate([p for p in prompts for _ in params], params * len(prompts))  # every pair
    if spec.kind == "json_object":  # (free JSON: a small model's string may run on to max_tokens)
        outs = [o for o in outs if o.finish_reason.value == "stop"]
        assert len(outs) >= 3
    for out in outs:
        assert out.finish_reason.value == "stop" and check(out.text), out.text


def exact_masked_distribution(model_dir, prompt_ids, spec, grammars, top_k, eos):
    """P(output) of up to 3 tokens (or fewer, ending in EOS): temperature 1, the grammar's mask,
    then top_k; the grammar's state advanced token by token, as plain decoding does."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def next_probs(generated):
        state = grammars.state(spec)
        state.accept(generated)
        with torch.inference_mode():
            logits = hf(torch.tensor([prompt_ids + generated])).logits[0, -1:]  # [1, vocab]
        masked = apply_bitmask(logits, state.tree_bitmask([0], [-1]))[0]
        top = masked.topk(top_k)
        probs = top.values.softmax(-1)
        return {t: p for t, p in zip(top.indices.tolist(), probs.tolist()) if p > 0}

    dist = {}

    def walk(generated, p):
        if len(generated) == 3 or (generated and generated[-1] == eos):
            dist[tuple(generated)] = p
            return
        for t, q in next_probs(generated).items():
            walk(generated + [t], p * q)

    walk([], 1.0)
    return dist


def test_sampled_speculation_under_a_grammar_keeps_the_target_distribution(tiny_model_dirs, compiler):
    target = tiny_model_dirs["llama"]
    grammars, tok = compiler
    spec = StructuredOutput("regex", "[a-d]{1,3}")
    prompt_ids, top_k, n = [500, 600, 700], 3, 3000
    exact = exact_masked_distribution(target, prompt_ids, spec, grammars, top_k, tok.eos_token_id)
    llm = LLM(
        str(target), draft=str(target), spec_policy="static-tree:2,2", max_num_seqs=128, max_num_batched_tokens=2048
    )
    params = [SamplingParams(max_tokens=3, temperature=1.0, top_k=top_k, seed=s, structured=spec) for s in range(n)]
    counts = {}
    for o in llm.generate([prompt_ids] * n, params):
        counts[tuple(o.token_ids)] = counts.get(tuple(o.token_ids), 0) + 1
    assert set(counts) <= set(exact), set(counts) - set(exact)
    assert llm.engine.spec.stats.totals.num_accepted > 0.05 * n
    cells = list(exact)
    assert chi_square_pvalue([counts.get(c, 0) for c in cells], [exact[c] for c in cells]) > 1e-3
