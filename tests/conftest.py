import os

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
