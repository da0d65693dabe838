import os
import threading

import openai
import pytest
import torch

torch.set_num_threads(int(os.environ.get("ADASERVE_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def smollm2_dir():
    from adaserve.models.sources import fp32_weights, resolve_model

    return fp32_weights(resolve_model("smollm2-135m", progress=False))  # transformers, the oracle, reads fp32


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, smollm2_dir):
    """Random-weight tiny Llama and Qwen2 models (HF format) with SmolLM2's tokenizer."""
    from tests.factories import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(root / arch, arch, smollm2_dir) for arch in ("llama", "qwen2")}


# -- the real server on loopback (test_server*.py): SmolLM2 with a 3-layer self draft, adaserve
# policy, a fixed cost model, three SLO classes. One per test module.
@pytest.fixture(scope="module")
def engine(smollm2_dir, tmp_path_factory):
    from adaserve.config import EngineConfig
    from adaserve.engine.async_engine import AsyncEngine
    from adaserve.engine.core import EngineCore
    from adaserve.sched.cost_model import CostModel, LatencyCurve

    cost = CostModel(
        LatencyCurve((1, 8, 16, 32, 64), (35.0, 40.0, 52.0, 84.0, 141.0)), LatencyCurve((1, 16, 64), (5.0, 7.0, 16.0))
    )
    path = tmp_path_factory.mktemp("cost") / "cost.json"
    cost.save(path)
    config = EngineConfig(
        model=str(smollm2_dir),
        draft=str(smollm2_dir),
        draft_num_layers=3,
        spec_policy="adaserve",
        cost_model=str(path),
        max_num_seqs=40,
        max_num_batched_tokens=256,
        max_model_len=2560,  # room for the long streams the abort tests cancel
    )
    built_on = []

    def build() -> EngineCore:
        built_on.append(threading.current_thread().name)
        return EngineCore(config)

    eng = AsyncEngine(build, max_pending_requests=64)
    eng.start()
    assert built_on == ["adaserve-engine"]  # every pass on one thread: one OpenMP pool
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    from adaserve.server.app import ServerConfig, create_app
    from adaserve.slo import SLOClass
    from tests.factories import LiveServer

    classes = {
        "chat": SLOClass(tpot_ms=500.0),
        "coding": SLOClass(tpot_ms=100.0, ttft_base_ms=5000.0),
        "batch": SLOClass(ttft_base_ms=1000.0, ttft_prefill_scale=3.0),  # + 3 x the prompt's prefill
    }
    config = ServerConfig("smollm2", slo_classes=classes, prefill_ms=lambda num_tokens: 10.0 * num_tokens)
    live = LiveServer(create_app(engine, config))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
