"""OpenAI request bodies -> device jobs for ``accllm serve``: parsed, validated and tokenized (the server runs
this in a thread, off the event loop). Every refusal is a :class:`~accllm.host.openai_api.RequestError`
naming the field, or :class:`NoModel`.

A prompt whose UTF-8 length proves it over the token limit is refused without tokenizing it; tokenizing
goes through ``encode_batch``, which releases the GIL.
"""
from __future__ import annotations

import math
import time

from .chat import ChatTemplate
from .openai_api import (ChatRequest, CompletionRequest, RequestError, logit_bias, parse_body, stop_strings,
                         validate)
from .sampling import SamplingParams
from .serve_worker import Job, Sequence, ServeLimits


class Prepared:
    """A validated request: the parsed body, its queued job, and whether the prompt is echoed."""

    def __init__(self, req, job: Job, echo: bool = False):
        self.req, self.job, self.echo = req, job, echo


def _max_token_bytes(tokenizer) -> int:
    """No token covers more UTF-8 bytes of input than this (0: unknown). A token's vocabulary string is at
    least as long as the bytes it stands for (byte-level BPE, sentencepiece's "▁", "<0x0A>" byte tokens)."""
    inner = getattr(tokenizer, "tok", None)
    if inner is None or not hasattr(inner, "id_to_token"):
        return 0
    return max((len(t.encode("utf-8", "replace")) for t in map(inner.id_to_token, range(tokenizer.vocab_size)) if t),
               default=0)


class RequestParser:
    """``completion(raw)`` / ``chat_request(raw)``: a body -> :class:`Prepared`, or the error naming the field."""

    def __init__(self, tokenizer, limits: ServeLimits, model_name: str, chat: ChatTemplate, context: int | None):
        self.tok, self.limits, self.model_name, self.chat, self.context = tokenizer, limits, model_name, chat, context
        self.max_token_bytes = _max_token_bytes(tokenizer)  # a longer prompt is refused without tokenizing it

    def _check_model(self, model) -> None:
        if model is not None and model != self.model_name:
            raise NoModel(model)

    def _encode(self, text: str, param: str, add_bos: bool = True) -> list[int]:
        if self.max_token_bytes:
            least = math.ceil(len(text.encode("utf-8")) / self.max_token_bytes)
            if least > self.limits.max_prompt_tokens:
                raise RequestError(param, f"{param}: at least {least} tokens, over the limit of "
                                   f"{self.limits.max_prompt_tokens}")
        batch = getattr(getattr(self.tok, "tok", None), "encode_batch", None)
        if batch is None:
            return self.tok.encode(text, add_bos=add_bos)
        # The tokenizers library holds the GIL in encode() but releases it in encode_batch(): a long prompt
        # must not stall the event loop's streams. The BOS rule stays the Tokenizer's (it is all "" encodes to).
        return self.tok.encode("", add_bos=add_bos) + batch([text], add_special_tokens=False)[0].ids

    def _prompt_ids(self, ids, param: str) -> list[int]:
        try:
            ids = self.tok.check_ids(ids)
        except ValueError as e:
            raise RequestError(param, f"{param}: {e}") from None
        if not ids:
            raise RequestError(param, f"{param}: the prompt is empty")
        return ids

    def _limit(self, ids: list[int], param: str, max_tokens: int) -> list[int]:
        if len(ids) > self.limits.max_prompt_tokens:
            raise RequestError(param, f"{param}: {len(ids)} tokens exceed the limit of {self.limits.max_prompt_tokens}")
        if self.context is not None and len(ids) + max_tokens > self.context:
            raise RequestError(param, f"{param}: {len(ids)} prompt tokens + max_tokens {max_tokens} exceed the "
                               f"model's context of {self.context}")
        return ids

    def _params(self, req, max_tokens: int, max_tokens_param: str, extra_stops=(), min_tokens: int = 1):
        p = SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_k=req.top_k or 0, top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
            stop_tokens=() if req.ignore_eos or self.tok.eos_id is None else (self.tok.eos_id,),
            stop=stop_strings(req.stop) + tuple(extra_stops), logit_bias=logit_bias(req.logit_bias, self.tok.vocab_size),
            presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0)
        try:
            p.validate(max_tokens_limit=self.limits.max_tokens, min_tokens=min_tokens)
        except ValueError as e:
            name = str(e).split(" ")[0]
            name = max_tokens_param if name == "max_tokens" else name
            raise RequestError(name, f"{max_tokens_param}: {e}" if name == max_tokens_param else str(e)) from None
        return p

    def _sequences(self, prompts, params: SamplingParams, n: int) -> list[Sequence]:
        if len(prompts) * n > self.limits.max_sequences:
            raise RequestError("n", f"n: {len(prompts)} prompt(s) x n={n} sequences exceed the limit of "
                               f"{self.limits.max_sequences} per request")
        out = []
        for ids in prompts:
            for j in range(n):
                seed = None if params.seed is None else (params.seed + j) % 2**64  # n different samples
                out.append(Sequence(len(out), ids, SamplingParams(**{**vars(params), "seed": seed})))
        return out

    def completion(self, raw: bytes) -> Prepared:
        req = validate(CompletionRequest, parse_body(raw))
        self._check_model(req.model)
        if req.suffix is not None:
            raise RequestError("suffix", "suffix: not supported (the model does no infilling)")
        if req.best_of not in (None, req.n):
            raise RequestError("best_of", "best_of: only best_of == n is supported (every sequence is returned)")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens == 0 and not req.echo:
            raise RequestError("max_tokens", "max_tokens: must be at least 1 (0 only with echo, to score a prompt)")
        params = self._params(req, max_tokens, "max_tokens", min_tokens=0 if req.echo else 1)
        prompts = [self._limit(ids, "prompt", max_tokens) for ids in self._completion_prompts(req.prompt)]
        job = Job(self._sequences(prompts, params, req.n), req.logprobs, bool(req.echo and req.logprobs is not None),
                  time.monotonic() + self.limits.request_timeout_s)
        return Prepared(req, job, echo=req.echo)

    def _completion_prompts(self, prompt) -> list[list[int]]:
        """A string, a list of token ids, or a batch of either (a non-empty list)."""
        if isinstance(prompt, str):
            return [self._encode(prompt, "prompt")]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(x, str) for x in prompt):
                return [self._encode(x, f"prompt[{i}]") for i, x in enumerate(prompt)]
            if all(isinstance(x, list) for x in prompt):
                return [self._prompt_ids(x, f"prompt[{i}]") for i, x in enumerate(prompt)]
            if not any(isinstance(x, (str, list)) for x in prompt):
                return [self._prompt_ids(prompt, "prompt")]
        raise RequestError("prompt", "prompt: required: a string, a list of token ids, or a non-empty list of "
                           "either (a batch)")

    def chat_request(self, raw: bytes) -> Prepared:
        req = validate(ChatRequest, parse_body(raw))
        self._check_model(req.model)
        if req.max_tokens is not None and req.max_completion_tokens is not None and \
                req.max_tokens != req.max_completion_tokens:
            raise RequestError("max_completion_tokens", "max_completion_tokens: differs from max_tokens; give one")
        if req.top_logprobs is not None and not req.logprobs:
            raise RequestError("top_logprobs", "top_logprobs: needs logprobs: true")
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in req.messages]
        try:
            text = self.chat.render(messages)
        except ValueError as e:
            raise RequestError("messages", f"messages: {e}") from None
        ids = self._encode(text, "messages", add_bos=not self.chat.writes_bos(text))
        which = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
        # No length given: as long as the server allows and the model's context still holds.
        max_tokens = req.max_tokens or req.max_completion_tokens or max(1, min(
            self.limits.max_tokens, self.limits.max_tokens if self.context is None else self.context - len(ids)))
        params = self._params(req, max_tokens, which, extra_stops=self.chat.stops)
        prompts = [self._limit(ids, "messages", max_tokens)]
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        job = Job(self._sequences(prompts, params, req.n), logprobs, False,
                  time.monotonic() + self.limits.request_timeout_s)
        return Prepared(req, job)


class NoModel(Exception):
    pass
