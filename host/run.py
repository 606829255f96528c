"""``accllm run BUILD --backend ... --prompt ...``: stream tokens from a backend as they arrive."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .backends import BACKENDS, open_backend
from .build import BuildDir
from .generate import Generation
from .sampling import SamplingParams


def sampling_from_args(a, tokenizer) -> SamplingParams:
    return SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                          seed=a.seed, stop_tokens=() if a.ignore_eos else (tokenizer.eos_id,),
                          stop=tuple(a.stop or ())).validate()


def stream(backend, tokenizer, prompt, params, out=None, max_prompt_tokens: int | None = None,
           echo_prompt: bool = True) -> Generation:
    """Print the prompt (unless ``echo_prompt`` is off), then each token's text as it arrives; returns the finished
    :class:`Generation`."""
    out = out or sys.stdout
    gen = Generation(backend, tokenizer, prompt, params, max_prompt_tokens=max_prompt_tokens)
    if echo_prompt:
        out.write(prompt if isinstance(prompt, str) else tokenizer.decode(prompt))
        out.flush()
    try:
        for ev in gen:
            out.write(ev.text)
            out.flush()
    finally:
        gen.close()
    out.write("\n")
    return gen


def describe(stats) -> str:
    tps = stats.decode_tokens_per_s
    ttft = stats.time_to_first_token_s
    return (f"{stats.prompt_tokens} prompt tokens, {stats.generated_tokens} generated ({stats.finish_reason}); "
            f"time to first token {ttft:.3f} s; " if ttft is not None else "no token generated; ") + \
        (f"decode {tps:.2f} tokens/s" if tps else "decode rate n/a (fewer than 2 tokens)")


def add_backend_arguments(p) -> None:
    p.add_argument("--backend", default="csim", choices=BACKENDS,
                   help="pynq (a Zynq board: KV260, ZCU104), xrt (an Alveo card: U280), csim (C-simulation of the "
                        "kernel), rtl (with the Verilated core), golden (torch golden model), fakequant (Brevitas model "
                        "of the checkpoint)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the device per token")
    p.add_argument("--bitstream", default=None, help="pynq/xrt: manifest entry name (default: the one that matches)")
    p.add_argument("--manifest", type=Path, default=None, help="pynq/xrt: bitstream manifest (default: bitstreams/manifest.json)")
    p.add_argument("--board", default=None, help="pynq/xrt: the board this is (checked against the manifest)")


def add_sampling_arguments(p) -> None:
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")


def backend_options(a) -> dict:
    return {"timeout_s": a.timeout, "bitstream": a.bitstream, "manifest": a.manifest, "board": a.board}


def run_command(a) -> int:
    build = BuildDir(a.build)
    tok = build.tokenizer()
    params = sampling_from_args(a, tok)
    if not a.prompt:
        raise ValueError("--prompt is empty: give some text to continue")
    from .engine import DeviceNotIdle, DeviceTimeout

    with open_backend(a.backend, a.build, **backend_options(a)) as backend:
        try:
            gen = stream(backend, tok, a.prompt, params)
        except (DeviceTimeout, DeviceNotIdle) as e:
            print(f"\naccllm run: device error: {e}", file=sys.stderr)
            return 3
    print(f"[{a.backend}] " + describe(gen.stats), file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps({"backend": a.backend, "prompt": a.prompt, "prompt_ids": gen.prompt_ids,
                                      "output_ids": gen.output_ids, "text": gen.text, **gen.stats.to_json()}, indent=1))
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="stream tokens from a build on a board, the C-simulation or the golden model")
    p.add_argument("build", help="build directory (accllm compile / accllm demo output)")
    p.add_argument("--prompt", required=True)
    add_backend_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--json", type=Path, default=None, help="also write the ids, text and timings here")
    p.set_defaults(func=run_command)
