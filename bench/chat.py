"""Chat prompts through the model's own template: the C-simulated engine against the golden model.

    python bench/chat.py [--build builds/smollm2] [--max-tokens 16] [--rtl-tokens 3]

For each of 24 chat prompts (rendered by the build's chat template, as ``accllm chat`` renders them) both the
C-simulation (``open_backend("csim")``) and the golden model generate greedily; their token ids must be identical.
On the first prompt the integer trace of every layer is compared (``accllm.hls.csim.compare_with_golden``), and,
with ``--rtl-tokens``, the C/RTL co-simulation (Verilated core behind the blackbox) runs the prompt plus its first
tokens and is compared the same way. A two-turn transcript streamed from the C-simulation, with its time to first
token and tokens/s, goes in the results too. Writes bench/results/chat.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def _greedy(backend, tok, ids, params):
    from accllm.host.generate import Generation

    gen = Generation(backend, tok, ids, params)
    for _ in gen:
        pass
    return gen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=ROOT / "builds" / "smollm2")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--system", default="Answer briefly.", help="system message of every conversation")
    ap.add_argument("--transcript-tokens", type=int, default=48)
    ap.add_argument("--rtl-tokens", type=int, default=0, help="co-simulate the first prompt plus this many tokens")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chat.json")
    a = ap.parse_args()

    import torch
    from tqdm import tqdm

    from accllm.hls.csim import CSim, compare_with_golden
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
    compression = json.loads((build.checkpoint() / "compression.json").read_text())["settings"]
    doc = {"build": str(a.build), "checkpoint_settings": compression, "chat_template": template.origin,
           "system": a.system, "max_tokens": a.max_tokens, "prompts": []}

    def save():
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=1))

    same = 0
    with open_backend("csim", a.build) as csim, open_backend("golden", a.build) as golden:
        for user in tqdm(PROMPTS[:a.prompts], desc="chat prompts: csim vs golden", unit="prompt"):
            session = ChatSession(tok, template, base, a.system)
            ids = session.prompt_ids(user)
            gc, gg = _greedy(csim, tok, ids, session.params), _greedy(golden, tok, ids, session.params)
            ok = gc.output_ids == gg.output_ids
            same += ok
            doc["prompts"].append({"user": user, "prompt_tokens": len(ids), "csim_ids": gc.output_ids,
                                   "golden_ids": gg.output_ids, "same": ok, "csim_text": gc.text,
                                   "csim": gc.stats.to_json(), "golden": gg.stats.to_json()})
        doc["prompts_same_tokens"] = f"{same}/{len(doc['prompts'])}"
        print(f"identical tokens on {doc['prompts_same_tokens']} chat prompts")
        save()

        # A two-turn conversation streamed from the C-simulation, as `accllm chat` shows it.
        session = ChatSession(tok, template, SamplingParams(**{**vars(base), "max_tokens": a.transcript_tokens}),
                              a.system)
        turns = []
        for user in TRANSCRIPT:
            print(f"user: {user}\nassistant: ", end="")
            gen = session.turn(csim, user)
            turns.append({"user": user, "assistant": gen.text, **gen.stats.to_json()})
        doc["transcript"] = {"backend": "csim", "turns": turns}
        save()

    first = doc["prompts"][0]
    ids = ChatSession(tok, template, base, a.system).prompt_ids(first["user"]) + first["csim_ids"]
    gold = GoldenModel.load(build.checkpoint())
    t0 = time.perf_counter()
    doc["integer_trace_csim"] = {"prompt": first["user"], "tokens": len(ids),
                                 **compare_with_golden(gold, CSim(build.path), ids)}
    doc["integer_trace_csim"]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"C-sim integer trace: {json.dumps(doc['integer_trace_csim'])[:400]}")
    save()
    if a.rtl_tokens:
        try:
            from accllm.hw.rtl_native import rtl_csim

            ids = ids[:len(ids) - len(first["csim_ids"]) + a.rtl_tokens]
            t0 = time.perf_counter()
            rtl = rtl_csim(build.path)
            got = rtl.generate(ids[:len(ids) - a.rtl_tokens], a.rtl_tokens)
            r = compare_with_golden(gold, rtl_csim(build.path), ids)
            doc["rtl_cosim"] = {"prompt": first["user"], "tokens_fed": len(ids), "generated_ids": got,
                                "same_as_csim": got == first["csim_ids"][:a.rtl_tokens], **r,
                                "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - the reason it could not run goes in the results
            doc["rtl_cosim"] = {"ran": False, "why": f"{type(e).__name__}: {e}"}
        print(f"RTL co-sim: {json.dumps(doc['rtl_cosim'])[:400]}")
        save()
    print(f"wrote {a.out}")
    return 0 if same == len(doc["prompts"]) and not doc["integer_trace_csim"]["integer_mismatches"] else 1


if __name__ == "__main__":
    sys.exit(main())
