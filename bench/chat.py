"""Chat prompts through the model's own template: the C-simulated engine against the golden model, and a few
tokens on the C/RTL co-simulation.

    python bench/chat.py [--build builds/smollm2] [--prompts 20] [--max-tokens 12] [--rtl-tokens 3] [--out FILE]

1. For each of up to 24 chat prompts (rendered by the build's chat template, as ``accllm chat`` renders them)
   the golden model generates greedily (prompt in the engine's prefill blocks of the build's T tokens, then
   token by token, ending at the template's end-of-turn token), and the same path is replayed on the
   C-simulation library with its integer trace on: every layer's integers and the LM head's are compared
   (mismatches per layer).
2. The C-simulation backend (``open_backend("csim")``, the path ``accllm chat`` streams from) generates greedily
   on the same prompt; its token ids must equal the golden model's. Its time to first token and decode
   tokens/s are recorded per prompt.
3. A two-turn conversation streamed from the C-simulation, as ``accllm chat`` shows it (the transcript).
4. ``--rtl-tokens N``: the first prompt plus N tokens on the C/RTL co-simulation of the ``rtlsim`` step (every
   linear on the Verilated ``accllm_engine`` reading the build's weight image from a memory model, QK/PV on the
   Verilated core behind the blackbox), compared the same way, timed.

Writes the results JSON (default bench/results/chat_smollm2.json) after each part.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many days are in a week?",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "What is the boiling point of water in Celsius?",
    "Give me a synonym for happy.",
    "What does a Python list comprehension do?",
    "Who wrote Romeo and Juliet?",
    "What planet is closest to the sun?",
    "Write a haiku about the sea.",
    "What is the opposite of cold?",
    "Translate 'thank you' into French.",
    "What is the largest ocean on Earth?",
    "How do I reverse a string in Python?",
    "What color is the sky on a clear day?",
    "List two fruits that are yellow.",
    "What is the square root of 81?",
    "Why do leaves change color in autumn?",
    "What language is spoken in Brazil?",
    "Explain what a CPU does in one sentence.",
    "What is the chemical symbol for gold?",
    "Suggest a name for a pet cat.",
    "How many legs does a spider have?",
]
TRANSCRIPT = ["What is the capital of France?", "And what is it famous for?"]


def greedy(backend, tok, ids, params):
    from accllm.host.generate import Generation

    gen = Generation(backend, tok, ids, params)
    for _ in gen:
        pass
    return gen


def traced_chat_path(sim, gold, prompt: list[int], max_new: int, stop_ids=()) -> dict:
    """The golden model's greedy reply to ``prompt`` (up to ``max_new`` tokens, ending at a token of ``stop_ids``)
    with the prompt in prefill mode (blocks of ``sim.prefill_block``) and the reply in decode mode, replayed on
    ``sim`` (a :class:`accllm.hls.csim.CSim`) with the integer trace on: mismatches per layer and in the LM head,
    each one's greedy tokens (``sim`` is fed the golden tokens, so one differing token does not hide the
    integers after it), the largest logit difference."""
    from accllm.sim.golden import flatten_trace

    layers, size = sim.layers, sim.trace_size
    per_layer, head, compared = [0] * layers, 0, 0

    def diff(golden_trace, got) -> int:
        nonlocal compared
        a = flatten_trace(gold.d, golden_trace).numpy()
        compared += a.size
        return int((a != got[:a.size]).sum())

    sim.reset()
    gold.reset()
    traces: list = []
    lg = gold.prefill(prompt, block=sim.prefill_block, traces=traces).numpy()
    lc = sim.prefill(prompt, trace=True)
    for t in range(len(prompt)):
        for layer in range(layers):
            per_layer[layer] += diff(traces[t][layer], sim.prefill_trace(t, layer))
    head += diff(gold.head_trace, sim.block_trace[len(prompt) * layers * size:])
    golden_ids, sim_ids, dlogit = [], [], 0.0
    for i in range(max_new):
        dlogit = max(dlogit, float(np.abs(lg - lc).max()))
        golden_ids.append(int(np.argmax(lg)))
        sim_ids.append(int(np.argmax(lc)))
        if i + 1 == max_new or golden_ids[-1] in stop_ids:
            break
        tr: list = []
        lg = gold.step(golden_ids[-1], tr).numpy()
        lc = sim.step(golden_ids[-1], trace=True)
        for layer in range(layers):
            per_layer[layer] += diff(tr[layer], sim.layer_trace(layer))
        head += diff(gold.head_trace, sim.trace[layers * size:])
    return {"tokens_fed": len(prompt) + len(golden_ids) - 1, "golden_ids": golden_ids, "ids": sim_ids,
            "same_tokens": golden_ids == sim_ids, "integer_mismatches": sum(per_layer) + head,
            "integers_compared": compared, "mismatches_per_layer": per_layer, "lm_head_mismatches": head,
            "max_logit_diff": dlogit}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=ROOT / "builds" / "smollm2")
    ap.add_argument("--max-tokens", type=int, default=12, help="new tokens per prompt (greedy)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--system", default="Answer briefly.", help="system message of every conversation")
    ap.add_argument("--transcript-tokens", type=int, default=48)
    ap.add_argument("--rtl-tokens", type=int, default=0,
                    help="run the first prompt plus this many tokens on the C/RTL co-simulation (rtlsim)")
    ap.add_argument("--label", default="", help="what this build is, for the results (e.g. 'W4 2:4, distilled')")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chat_smollm2.json")
    a = ap.parse_args()
    if not 1 <= a.prompts <= len(PROMPTS):
        ap.error(f"--prompts must lie in [1, {len(PROMPTS)}]")
    if a.max_tokens < 1 or a.rtl_tokens < 0 or a.transcript_tokens < 1:
        ap.error("--max-tokens and --transcript-tokens must be >= 1, --rtl-tokens >= 0")

    import torch
    from tqdm import tqdm

    from accllm.hls.csim import CSim
    from accllm.host.backends import open_backend
    from accllm.host.build import BuildDir
    from accllm.host.chat import ChatTemplate
    from accllm.host.chat_cli import ChatSession
    from accllm.host.sampling import SamplingParams
    from accllm.sim.golden import GoldenModel

    torch.set_num_threads(1)  # the golden model runs many small ops; threads only add overhead here
    build = BuildDir(a.build)
    tok = build.tokenizer()
    template = ChatTemplate.from_dir(build.tokenizer_dir())
    base = SamplingParams(max_tokens=a.max_tokens, temperature=0, stop_tokens=(tok.eos_id,))
    settings = json.loads((build.checkpoint() / "compression.json").read_text())["settings"]
    doc = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "build": str(a.build), "label": a.label, "checkpoint_settings": settings,
           "chat_template": template.origin, "system": a.system, "max_tokens": a.max_tokens,
           "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "torch_threads": 1},
           "prompts": []}

    def save():
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=1))

    def session(max_tokens=a.max_tokens, stop_strings=True):
        s = ChatSession(tok, template, SamplingParams(**{**vars(base), "max_tokens": max_tokens}), a.system)
        if not stop_strings:  # compared runs end on tokens only (a stop string only cuts the text)
            s.params = SamplingParams(**{**vars(s.params), "stop": ()}).validate()
        return s

    prompts = PROMPTS[:a.prompts]
    gold = GoldenModel.load(build.checkpoint())
    sim = CSim(build.path)  # the same C-simulation library as the backend, called directly for its trace
    total, head, t_trace = [0] * sim.layers, 0, 0.0
    with open_backend("csim", a.build) as csim:
        for user in tqdm(prompts, desc="chat prompts: golden vs csim", unit="prompt"):
            s = session(stop_strings=False)
            ids = s.prompt_ids(user)
            t0 = time.perf_counter()
            r = traced_chat_path(sim, gold, ids, a.max_tokens, set(s.params.stop_tokens))
            t_trace += time.perf_counter() - t0
            golden_ids = r["golden_ids"][:-1] if r["golden_ids"][-1] in s.params.stop_tokens else r["golden_ids"]
            gc = greedy(csim, tok, ids, s.params)  # the path `accllm chat` streams from, timed
            doc["prompts"].append({"user": user, "prompt_tokens": len(ids), "same": gc.output_ids == golden_ids,
                                   "csim_ids": gc.output_ids, "golden_ids": golden_ids, "csim_text": gc.text,
                                   "csim": gc.stats.to_json(), "integer_trace": r})
            total = [x + y for x, y in zip(total, r["mismatches_per_layer"])]
            head += r["lm_head_mismatches"]
            save()
        same = sum(p["same"] for p in doc["prompts"])
        c = [p["csim"] for p in doc["prompts"]]
        doc["summary"] = {
            "prompts_same_tokens": f"{same}/{len(prompts)}",
            "csim_time_to_first_token_s_median": median([x["time_to_first_token_s"] for x in c]),
            "csim_time_to_first_token_s_range": [min(x["time_to_first_token_s"] for x in c),
                                                 max(x["time_to_first_token_s"] for x in c)],
            "prompt_tokens_range": [min(p["prompt_tokens"] for p in doc["prompts"]),
                                    max(p["prompt_tokens"] for p in doc["prompts"])],
            "csim_decode_tokens_per_s_median": median([x["decode_tokens_per_s"] for x in c]),
            "csim_generated_tokens": sum(x["generated_tokens"] for x in c),
            "integer_trace": {
                "what": "every prompt in prefill mode and its golden reply in decode mode, C-sim library vs golden",
                "tokens_fed": sum(p["integer_trace"]["tokens_fed"] for p in doc["prompts"]),
                "integer_mismatches": sum(total) + head,
                "integers_compared": sum(p["integer_trace"]["integers_compared"] for p in doc["prompts"]),
                "mismatches_per_layer": total, "lm_head_mismatches": head,
                "max_logit_diff": max(p["integer_trace"]["max_logit_diff"] for p in doc["prompts"]),
                "seconds": round(t_trace, 1)},
        }
        sm = doc["summary"]
        print(f"identical tokens on {sm['prompts_same_tokens']} chat prompts; integer mismatches "
              f"{sm['integer_trace']['integer_mismatches']} of {sm['integer_trace']['integers_compared']:,}; "
              f"C-sim time to first token {sm['csim_time_to_first_token_s_median']:.3f} s (median), "
              f"decode {sm['csim_decode_tokens_per_s_median'] or 0:.2f} tokens/s (median)")
        save()

        # A two-turn conversation streamed from the C-simulation, as `accllm chat` shows it.
        s = session(a.transcript_tokens)
        turns = []
        for user in TRANSCRIPT:
            print(f"user: {user}\nassistant: ", end="")
            gen = s.turn(csim, user)
            print()
            turns.append({"user": user, "assistant": gen.text, **gen.stats.to_json()})
        doc["transcript"] = {"backend": "csim", "system": a.system, "turns": turns,
                             "command": f"accllm chat {a.build} --system {json.dumps(a.system)} --max-tokens "
                                        f"{a.transcript_tokens} --temperature 0 "
                                        + " ".join(f"--message {json.dumps(u)}" for u in TRANSCRIPT)}
        save()

    if a.rtl_tokens:
        from accllm.hw import engine_native, rtl_native

        first = doc["prompts"][0]
        ids = session().prompt_ids(first["user"])
        t0 = time.perf_counter()
        try:
            rtl = engine_native.engine_csim(build.path)
            t_built = time.perf_counter()
            r = traced_chat_path(rtl, gold, ids, a.rtl_tokens)
            eng, core = engine_native.stats(rtl.lib), rtl_native.load_stats(rtl.lib)
            doc["rtl_cosim"] = {
                "backend": "rtlsim: linears on the Verilated accllm_engine (memory model "
                           f"{engine_native.DEFAULT_MEMORY}), QK/PV on the Verilated core",
                "prompt": first["user"], "prompt_tokens": len(ids), "new_tokens": a.rtl_tokens,
                "same_tokens_as_golden": r["same_tokens"] and r["ids"] == first["golden_ids"][:a.rtl_tokens],
                **r, "protocol_errors": eng["protocol_errors"] + core["protocol_errors"],
                "engine": eng, "core_qk_pv": core, "build_seconds": round(t_built - t0, 1),
                "run_seconds": round(time.perf_counter() - t_built, 1),
                "seconds_per_token_fed": round((time.perf_counter() - t_built) / r["tokens_fed"], 2)}
        except Exception as e:  # noqa: BLE001 - the reason it could not run goes in the results
            doc["rtl_cosim"] = {"ran": False, "why": f"{type(e).__name__}: {e}"}
        print(f"RTL co-sim: {json.dumps(doc['rtl_cosim'])}")
        save()
    doc["machine"]["loadavg_at_end"] = os.getloadavg()
    save()
    print(f"wrote {a.out}")
    ok = (same == len(prompts) and not doc["summary"]["integer_trace"]["integer_mismatches"]
          and (not a.rtl_tokens or (doc["rtl_cosim"].get("same_tokens_as_golden")
                                    and not doc["rtl_cosim"]["integer_mismatches"])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
