"""adaserve: LLM serving with per-request SLOs and SLO-customized speculative decoding."""

from adaserve.config import EngineConfig
from adaserve.sampling import SamplingParams

__all__ = ["SamplingParams", "EngineConfig", "LLM"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # LLM pulls in torch; import it lazily so `import adaserve` stays cheap for the scheduler side.
    if name == "LLM":
        from adaserve.engine.llm import LLM

        return LLM
    raise AttributeError(name)
