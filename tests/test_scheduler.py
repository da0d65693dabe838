"""Continuous batching with chunked prefill, admission and preemption: scheduler only, no model."""

from adaserve.kv.manager import KVCacheManager
from adaserve.request import FinishReason, Request, RequestStatus
from adaserve.sampling import SamplingParams
from adaserve.sched.scheduler import Scheduler


def make_request(rid: str, prompt_len: int) -> Request:
    return Request(rid, list(range(prompt_len)), SamplingParams(max_tokens=100), arrival_time=0.0)


def make_scheduler(num_blocks=16, block_size=4, max_num_seqs=8, budget=32) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, block_size), max_num_seqs, budget)


def run_step(sched: Scheduler) -> dict[str, int]:
    """Schedule, then play the model: commit the KV and append a token where the step samples."""
    out = sched.schedule()
    for c in out.chunks:
        samples = c.samples
        c.request.num_computed_tokens += c.num_new_tokens
        if samples:
            c.request.output_ids.append(7)
    return {c.request.request_id: c.num_new_tokens for c in out.chunks}


def test_prefill_is_chunked_under_the_token_budget_and_decodes_share_it():
    sched = make_scheduler(budget=10)
    a, b = make_request("a", 6), make_request("b", 13)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == {"a": 6, "b": 4}
    assert a.num_output_tokens == 1 and b.num_output_tokens == 0  # b's chunk does not sample
    assert run_step(sched) == {"a": 1, "b": 9}
    assert run_step(sched) == {"a": 1, "b": 1}


def test_max_num_seqs_bounds_running_requests():
    sched = make_scheduler(max_num_seqs=2)
    for rid in "abc":
        sched.add(make_request(rid, 3))
    assert run_step(sched) == {"a": 3, "b": 3}
    sched.finish(sched.running[0], FinishReason.STOP)
    assert run_step(sched) == {"b": 1, "c": 3}


def test_request_that_does_not_fit_waits_for_blocks():
    sched = make_scheduler(num_blocks=4, block_size=4, budget=64)
    a, b = make_request("a", 12), make_request("b", 8)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == {"a": 12}
    assert b.status is RequestStatus.WAITING
    sched.finish(a, FinishReason.STOP)
    assert run_step(sched) == {"b": 8}


def test_out_of_blocks_mid_decode_preempts_the_newest_request():
    sched = make_scheduler(num_blocks=4, block_size=4, budget=64)
    a, b = make_request("a", 8), make_request("b", 7)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == {"a": 8, "b": 7}  # all 4 blocks used; b's last slot is free
    # a's 9th token needs a 3rd block and none is free: b, the newest, is preempted for it.
    assert run_step(sched) == {"a": 1}
    assert b.status is RequestStatus.WAITING and b.num_preemptions == 1 and b.num_computed_tokens == 0
    assert sched.waiting[0] is b
    assert sched.kv.block_tables["a"] and "b" not in sched.kv.block_tables


def test_preempted_request_recomputes_prompt_and_outputs():
    sched = make_scheduler(num_blocks=4, block_size=4, budget=64)
    a, b = make_request("a", 8), make_request("b", 7)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    assert b.num_output_tokens == 1
    run_step(sched)  # b is preempted here
    sched.finish(a, FinishReason.STOP)
    assert run_step(sched) == {"b": 8}  # 7 prompt tokens + its 1 output token
    assert b.num_output_tokens == 2


def test_only_request_preempts_itself_when_alone_and_out_of_memory():
    sched = make_scheduler(num_blocks=1, block_size=4, budget=64)
    a = make_request("a", 4)
    sched.add(a)
    run_step(sched)
    out = sched.schedule()
    assert out.is_empty and out.preempted == [a]


def test_finish_frees_blocks_of_waiting_and_running_requests():
    sched = make_scheduler(num_blocks=4, block_size=4, budget=4)
    a, b = make_request("a", 8), make_request("b", 2)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    sched.finish(a, FinishReason.ABORT)
    sched.finish(b, FinishReason.ABORT)
    assert not sched.has_work and sched.kv.num_free_blocks == 4


def test_paused_best_effort_requests_get_no_tokens_and_hold_no_seat():
    from adaserve.sched.scheduler import StepLimits

    sched = make_scheduler(max_num_seqs=2)
    a, b, c = make_request("a", 3), make_request("b", 3), make_request("c", 3)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    sched.demote(b)
    sched.add(c)
    out = sched.schedule(StepLimits(pause_best_effort=True))
    assert [ch.request.request_id for ch in out.chunks] == ["a", "c"]  # c takes b's seat; b keeps its KV
    assert b.status is RequestStatus.RUNNING and "b" in sched.kv.block_tables
    out = sched.schedule()
    assert [ch.request.request_id for ch in out.chunks] == ["a", "b"]  # no more than max_num_seqs at once
