"""When a request is done: eos, stop token ids, stop strings, max_tokens, context length."""

from __future__ import annotations

from adaserve.request import FinishReason, Request


class StopChecker:
    def __init__(self, tokenizer: object | None, eos_token_ids: set[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def check(self, request: Request) -> FinishReason | None:
        """Called after each new token; updates request.output_text and returns why it ends."""
        params, last = request.params, request.output_ids[-1]
        text = ""
        if self.tokenizer is not None:  # (the simulator's synthetic tokens have no text)
            text = self.tokenizer.decode(request.output_ids, skip_special_tokens=True)
            request.output_text = text.removesuffix("\ufffd")  # hold back an incomplete UTF-8 char
        if not params.ignore_eos and last in self.eos_token_ids:
            return FinishReason.STOP  # (stop_reason stays None, as in vLLM)
        if last in params.stop_token_ids:
            request.stop_reason = last
            return FinishReason.STOP
        if params.stop and self._cut_at_stop_string(request, text):
            return FinishReason.STOP
        if request.num_output_tokens >= params.max_tokens or request.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    @staticmethod
    def _cut_at_stop_string(request: Request, text: str) -> bool:
        # The earliest stop string wins; the text after it is never shown.
        hits = [(text.find(s), s) for s in request.params.stop if s in text]
        if not hits:
            return False
        pos, stop = min(hits)
        end = pos + len(stop) if request.params.include_stop_str_in_output else pos
        request.output_text = text[:end]
        request.stop_reason = stop
        return True
