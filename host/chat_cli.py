"""``accllm chat BUILD``: a multi-turn chat with a build, streamed from a backend (C-simulation by default).

Each turn renders the whole conversation with the model's own chat template (:mod:`accllm.host.chat`, the
same one ``accllm serve`` uses for ``/v1/chat/completions``), prefills it and streams the reply; the reply
joins the history. User turns come from ``--message`` (repeatable, in order), else from standard input
(one turn per line) when it is not a terminal, else from an interactive prompt (an empty line or EOF ends).
Every turn prints its time to first token and decode tokens/s on standard error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .backends import open_backend
from .build import BuildDir
from .chat import ChatTemplate
from .generate import Generation
from .run import add_backend_arguments, add_sampling_arguments, backend_options, describe, stream
from .sampling import SamplingParams


class ChatSession:
    """The history of one conversation and how to turn it into a prompt and stop conditions."""

    def __init__(self, tokenizer, template: ChatTemplate, params: SamplingParams, system: str | None = None):
        self.tok, self.template = tokenizer, template
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        # The template's end-of-turn token (e.g. <|im_end|>) ends a reply even where config.json names another EOS.
        turn_end = tokenizer.tok.token_to_id(template.eos_token) if template.eos_token else None
        stop_tokens = tuple(dict.fromkeys(params.stop_tokens + ((turn_end,) if turn_end is not None else ())))
        self.params = SamplingParams(**{**vars(params), "stop_tokens": stop_tokens,
                                        "stop": tuple(params.stop) + tuple(template.stops)}).validate()

    def prompt_ids(self, user_text: str) -> list[int]:
        """The conversation with ``user_text`` as the next user turn, as token ids (BOS once)."""
        if not user_text.strip():
            raise ValueError("the message is empty")
        text = self.template.render(self.messages + [{"role": "user", "content": user_text}])
        return self.tok.encode(text, add_bos=not self.template.writes_bos(text))

    def turn(self, backend, user_text: str, out=None) -> Generation:
        """Stream one reply to ``out``; the user turn and the reply join the history."""
        gen = stream(backend, self.tok, self.prompt_ids(user_text), self.params, out, echo_prompt=False)
        self.messages += [{"role": "user", "content": user_text}, {"role": "assistant", "content": gen.text.strip()}]
        return gen


def _user_turns(messages):
    if messages:
        yield from messages
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            return
        if line.strip():
            yield line.rstrip("\n")


def chat_command(a) -> int:
    from .engine import DeviceNotIdle, DeviceTimeout

    build = BuildDir(a.build)
    tok = build.tokenizer()
    template = ChatTemplate.from_dir(build.tokenizer_dir())
    params = SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                            seed=a.seed, stop_tokens=() if a.ignore_eos or tok.eos_id is None else (tok.eos_id,),
                            stop=tuple(a.stop or ())).validate()
    session = ChatSession(tok, template, params, a.system)
    print(f"accllm chat: {a.backend} backend on {a.build}; chat template: {template.origin}", file=sys.stderr)
    turns = []
    with open_backend(a.backend, a.build, **backend_options(a)) as backend:
        for user_text in _user_turns(a.message):
            if a.message or not sys.stdin.isatty():
                print(f"user: {user_text}\nassistant: ", end="", flush=True)
            try:
                gen = session.turn(backend, user_text)
            except (DeviceTimeout, DeviceNotIdle) as e:
                print(f"\naccllm chat: device error: {e}", file=sys.stderr)
                return 3
            print(f"[{a.backend}] " + describe(gen.stats), file=sys.stderr)
            turns.append({"user": user_text, "assistant": gen.text, "prompt_ids": gen.prompt_ids,
                          "output_ids": gen.output_ids, **gen.stats.to_json()})
    if a.json:
        a.json.write_text(json.dumps({"backend": a.backend, "build": str(a.build), "chat_template": template.origin,
                                      "turns": turns}, indent=1))
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a build through its chat template, streamed from a backend")
    p.add_argument("build", help="build directory (accllm build / accllm demo output)")
    p.add_argument("--message", action="append", default=None,
                   help="a user turn (repeatable: a multi-turn conversation); default: read standard input")
    p.add_argument("--system", default=None, help="a system message before the first turn")
    add_backend_arguments(p)
    add_sampling_arguments(p)
    p.set_defaults(max_tokens=128)
    p.add_argument("--json", type=Path, default=None, help="also write every turn's ids, text and timings here")
    p.set_defaults(func=chat_command)
