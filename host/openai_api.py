"""The OpenAI wire format ``accllm serve`` speaks: request schemas, body decoding, response objects.

Requests are validated strictly: an unknown field, a wrong type (``n: "two"``), a value outside its range
(``seed: -1``), text that is not UTF-8 or holds a lone surrogate: each is a :class:`RequestError` naming the
field (``param``), which the server turns into a 400 with an OpenAI-style error body.

Supported beyond generation itself: ``echo`` and ``logprobs`` (completions), ``logprobs``/``top_logprobs``
(chat), ``logit_bias``, ``presence_penalty``/``frequency_penalty``, ``n`` and a batch of prompts (run one
after another), ``stop`` (up to :data:`MAX_STOPS` strings), ``stream_options.include_usage``; extensions
``top_k`` and ``ignore_eos``. Refused with a 400: ``suffix`` (no infilling), ``best_of`` other than ``n``,
tools / function calls, a ``response_format`` other than text, non-text message parts, any field this
module does not name. ``user`` is accepted and ignored (it only labels a request).
Log-probabilities are the model's own (raw logits, before logit bias, penalties and temperature).
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
LOGPROB_FLOOR = -9999.0  # stands for -inf, which JSON cannot carry (OpenAI uses the same value)


class RequestError(ValueError):
    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


# -- the body ----------------------------------------------------------------------------------------------

def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body. Bytes that are not UTF-8 survive decoding as lone surrogates
    (``surrogateescape``) so the error can name the field they sit in, like a ``\\ud800`` escape would."""
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(None, "the request body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        raise RequestError(None, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(None, f"the request body must be a JSON object, got {type(body).__name__}")
    _check_text(body, ())
    return body


def _path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_text(value, loc: tuple) -> None:
    """Every string (keys too) must be encodable as UTF-8: no lone surrogates."""
    stack = [(value, loc)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise RequestError(_path(at) or None, f"{_path(at) or 'a key'}: not valid UTF-8 text "
                                   f"(character {e.start} is a lone surrogate or an undecodable byte)") from None
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append((k, at))
                stack.append((x, (*at, k)))
        elif isinstance(v, list):
            stack.extend((x, (*at, i)) for i, x in enumerate(v))


# -- request schemas ---------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: Any = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None
    ignore_eos: bool = False


class CompletionRequest(_Sampling):
    prompt: Any = None
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None


def validate(model: type[_Strict], body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        # The deepest error is the most specific one (a union reports one error per alternative).
        err = max(e.errors(include_url=False), key=lambda x: len(x["loc"]))
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x in _UNION_TAGS)))
        param = _path(loc) or None
        if err["type"] == "extra_forbidden":
            raise RequestError(param, f"{param}: not supported by this server") from None
        if err["type"] == "missing":
            raise RequestError(param, f"{param}: required") from None
        got = repr(err.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        raise RequestError(param, f"{param}: {err['msg'][0].lower()}{err['msg'][1:]}, got {got}") from None


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}


def stop_strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError("stop", "stop: must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise RequestError("stop", f"stop: at most {MAX_STOPS} strings, got {len(stops)}")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError("stop", f"stop: each string must have 1 to {MAX_STOP_CHARS} characters")
    return tuple(stops)


def logit_bias(value: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    out = {}
    for k, v in (value or {}).items():
        if not (k.isascii() and k.isdigit() and int(k) < vocab_size):
            raise RequestError("logit_bias", f"logit_bias: keys must be token ids in [0, {vocab_size}), got {k!r}")
        if not -100 <= v <= 100:
            raise RequestError("logit_bias", f"logit_bias: values must lie in [-100, 100], got {v!r} for token {k}")
        out[int(k)] = float(v)
    return out


# -- responses ---------------------------------------------------------------------------------------------

def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _lp(x: float | None) -> float | None:
    return None if x is None else max(x, LOGPROB_FLOOR) if not math.isnan(x) else LOGPROB_FLOOR


class TokenText:
    """Each token id's own text, as logprob entries show it (cached: the same ids recur)."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, token_id: int) -> str:
        s = self.cache.get(token_id)
        if s is None:
            s = self.tok.decode([token_id])
            if len(self.cache) < 65536:
                self.cache[token_id] = s
        return s


def completion_logprobs(names: TokenText, entries, offset0: int = 0) -> dict:
    """Legacy completions format. ``entries``: (TokenLogprob, text) per token, in order; ``text`` is the
    token's share of the output, which gives ``text_offset``."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    off = offset0
    for lp, text in entries:
        out["tokens"].append(names(lp.token_id))
        out["token_logprobs"].append(_lp(lp.logprob))
        out["top_logprobs"].append({names(i): _lp(x) for i, x in lp.top} if lp.logprob is not None else None)
        out["text_offset"].append(off)
        off += len(text)
    return out


def chat_logprobs(names: TokenText, entries) -> dict:
    def item(i, x):
        s = names(i)
        return {"token": s, "logprob": _lp(x), "bytes": list(s.encode("utf-8"))}

    return {"content": [{**item(lp.token_id, lp.logprob), "top_logprobs": [item(i, x) for i, x in lp.top]}
                        for lp, _ in entries]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish(reason: str | None) -> str:
    """OpenAI's finish reasons are "stop" and "length" (a cancelled request gets no answer)."""
    return "length" if reason == "length" else "stop"


def model_card(model_id: str, created: int, backend: str) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "accllm", "backend": backend}
