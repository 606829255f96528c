"""Host runtime benchmark: time to first token and decode tokens/s per backend, and resident memory over a
long stream through the Λ cache.

    python bench/runtime.py BUILD                       # BUILD: `accllm demo -o BUILD` (or `accllm compile`) output
    python bench/runtime.py BUILD --stream-tokens 100000 --stream-backend csim --stream-build small

Writes ``bench/results/runtime.json`` and ``bench/results/runtime_rss.png``.

Latency: every backend runs the same prompts, greedy, ``--new-tokens`` tokens (EOS ignored), through the
same :class:`accllm.host.generate.Generation` loop a user gets from ``accllm run``. Time to first token
includes prefill (the engine runs the prompt token by token).

Memory: one stream of ``--stream-tokens`` tokens (sampled, EOS ignored, so it never stops early) through
``--stream-backend`` on ``--stream-build`` (by default a small configuration of the engine: see
:func:`small_build`); the process's resident set size (VmRSS) is sampled at 1k, 10k, 100k tokens (and
every ``--rss-every`` tokens for the plot). Under Λ the device KV cache has a fixed size, so RSS must stay
flat; the JSON states the growth between the first and the last sample.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from accllm.host.backends import BACKENDS, open_backend
from accllm.host.build import BuildDir
from accllm.host.generate import Generation
from accllm.host.sampling import SamplingParams

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "A list comprehension consists of",
    "The return value of the function is",
    "Augmented assignment is the combination, in a single statement, of a binary operation and an assignment",
]
MARKS = (1_000, 10_000, 100_000)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def latency(backend, tok, new_tokens: int) -> list[dict]:
    rows = []
    for prompt in PROMPTS:
        gen = Generation(backend, tok, prompt, SamplingParams(max_tokens=new_tokens, temperature=0))
        for _ in gen:
            pass
        s = gen.stats
        rows.append({"prompt": prompt, "prompt_tokens": s.prompt_tokens, "generated_tokens": s.generated_tokens,
                     "time_to_first_token_s": s.time_to_first_token_s, "decode_tokens_per_s": s.decode_tokens_per_s,
                     "prefill_tokens_per_s": s.prompt_tokens / s.time_to_first_token_s, "output_ids": gen.output_ids})
    return rows


def stream_rss(backend, tok, n_tokens: int, every: int) -> dict:
    """One generation of ``n_tokens`` tokens; RSS samples along the way."""
    params = SamplingParams(max_tokens=n_tokens, temperature=1.0, top_k=50, seed=0)
    gen = Generation(backend, tok, PROMPTS[0], params, record=False)
    samples = [(0, rss_bytes())]
    marks = {}
    t0 = time.perf_counter()
    with tqdm(total=n_tokens, desc=f"stream ({backend.name})", unit="tok", mininterval=2) as bar:
        for ev in gen:
            n = ev.index + 1
            if n % every == 0 or n in MARKS:
                r = rss_bytes()
                samples.append((n, r))
                if n in MARKS:
                    marks[str(n)] = r
            bar.update(1)
    secs = time.perf_counter() - t0
    first = next((r for n, r in samples if n >= min(MARKS[0], n_tokens)), samples[-1][1])
    return {"backend": backend.name, "tokens": gen.stats.generated_tokens, "seconds": round(secs, 1),
            "tokens_per_s": gen.stats.generated_tokens / secs, "rss_bytes_at": marks,
            "rss_growth_bytes_after_first_1k": samples[-1][1] - first,
            "kv_cache_bytes": backend.resident_bytes(), "samples": samples}


def small_build(work: Path) -> Path:
    """A small configuration of the same engine for the long stream (the bundled model runs ~15 tokens/s in
    C-simulation: 100k tokens would take hours): a random-initialised Llama (hidden 64, 2 layers) with the
    bundled tokenizer, compressed (2:4, Λ, W2A8KV4, RTN), exported and compiled by the real flow functions."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from accllm.hls.flow import export_and_compile
    from accllm.quant.checkpoint import SETTINGS_FILE, save_compressed
    from accllm.quant.model import BUNDLED_MODEL
    from accllm.host.tokenizer import Tokenizer
    from accllm.quant.quantize import CompressionSettings
    from accllm.quant.compress import compress

    ckpt, build = work / "checkpoint", work / "build"
    if not (ckpt / SETTINGS_FILE).is_file():
        tok = Tokenizer(BUNDLED_MODEL)
        cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                          tie_word_embeddings=True, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        hf_tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
        s = CompressionSettings(weight_method="rtn", calib_samples=8, calib_seqlen=64)
        model, masks = compress(model, hf_tok, s, device="cpu", progress=False)
        save_compressed(model, hf_tok, s, masks, ckpt)
    export_and_compile(ckpt, work)
    if not (build / "checkpoint").exists():
        (build / "checkpoint").symlink_to(ckpt.resolve())
    return build


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["stream"]["samples"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([n for n, _ in s], [r / 2**20 for _, r in s], marker=".")
    ax.set_xlabel("tokens streamed")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(0, max(r for _, r in s) / 2**20 * 1.2)
    ax.set_title(f"RSS over a Λ stream ({result['stream']['backend']} backend)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--backends", nargs="+", default=["csim", "golden", "fakequant"], choices=BACKENDS)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--stream-backend", default="csim", choices=BACKENDS)
    ap.add_argument("--stream-build", default="small",
                    help="build for the stream: 'small' (default: a small configuration built under "
                         "$TMPDIR/accllm_runtime_small), 'same' (BUILD) or a build directory")
    ap.add_argument("--stream-tokens", type=int, default=100_000)
    ap.add_argument("--rss-every", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime.json")
    a = ap.parse_args(argv)

    tok = BuildDir(a.build).tokenizer()
    result = {"build": str(a.build), "host": {"machine": platform.machine(), "python": platform.python_version(),
                                              "cpus": __import__("os").cpu_count()},
              "new_tokens": a.new_tokens, "latency": {}}
    for name in a.backends:
        t = time.perf_counter()
        with open_backend(name, a.build) as be:
            load_s = time.perf_counter() - t
            rows = latency(be, tok, a.new_tokens)
        result["latency"][name] = {"load_seconds": round(load_s, 2), "prompts": rows}
        ttft = sum(r["time_to_first_token_s"] for r in rows) / len(rows)
        tps = sum(r["decode_tokens_per_s"] for r in rows) / len(rows)
        print(f"{name:>10}: load {load_s:6.2f} s, mean time to first token {ttft:7.3f} s, mean decode {tps:8.2f} tokens/s")
    ids = {n: [r["output_ids"] for r in v["prompts"]] for n, v in result["latency"].items()}
    names = list(ids)
    result["same_greedy_tokens"] = {f"{a_}=={b_}": ids[a_] == ids[b_] for i, a_ in enumerate(names) for b_ in names[i + 1:]}
    print("same greedy tokens:", result["same_greedy_tokens"])
    if a.stream_tokens:
        sb = {"same": a.build, "small": None}.get(a.stream_build, Path(a.stream_build))
        sb = sb or small_build(Path(tempfile.gettempdir()) / "accllm_runtime_small")
        with open_backend(a.stream_backend, sb) as be:
            result["stream"] = stream_rss(be, BuildDir(sb).tokenizer(), a.stream_tokens, a.rss_every)
        result["stream"]["build"] = str(sb) if a.stream_build != "small" else "small (hidden 64, 2 layers, random init)"
        st = result["stream"]
        print(f"stream of {st['tokens']} tokens on {st['backend']}: {st['tokens_per_s']:.1f} tokens/s; RSS at "
              + ", ".join(f"{k}: {v / 2**20:.1f} MiB" for k, v in st["rss_bytes_at"].items())
              + f"; growth after the first 1k tokens {st['rss_growth_bytes_after_first_1k'] / 2**20:+.2f} MiB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")
    if a.stream_tokens:
        png = a.out.with_name(a.out.stem + "_rss.png")
        plot(result, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
