"""Time and peak resident memory of quantize -> export -> compile per model size.

    python bench/scale.py                                   # bundled, smollm2, llama-1b-dims-2l, llama-1b-dims-4l
    nice -n 19 python bench/scale.py --sizes llama-1b-dims,llama-7b-dims --deadline 14:00    # the full sizes
    python bench/scale.py --sizes llama-7b-dims --work W --background --wait 540 --label "..."   # then, while it runs:
    python bench/scale.py --work W --wait 540               # (a machine whose commands last 10 minutes at most)

Random-weight models (Llama-3.2-1B-like and Llama-2-7B dims, the bundled tokenizer, fp16 weights in one
safetensors shard per decoder layer as Hugging Face shards them, written layer by layer) are made in a temporary
folder and deleted afterwards; nothing of them is committed. Each step runs as the ``accllm`` command in a fresh
subprocess whose peak RSS is measured (its VmHWM, read every second and at exit; with getrusage for its children,
e.g. g++). Quantize (RTN), export and compile all work one decoder layer at a time. Compression: 2:4 (Wanda) + W2
RTN + A8KV4 + Λ, group 32, 4 calibration windows of 64 tokens, no perplexity evaluation.

``--background`` runs the measurement in a process of its own session that outlives the command (its log and the
record so far in ``--work``); ``--wait S`` follows it for up to S seconds. ``--label`` names the machine in the JSON
beside its measured cores, memory and load. The llama-7b-dims row ran this way on the device machine (16 cores,
128 GiB, CPU only), with the wheels of brevitas, qonnx, onnxoptimizer and their pure-Python needs installed there by
``pip install --target`` and accllm's folders linked as a namespace package on PYTHONPATH; its image's numpy 2.5,
onnx 1.23 and torch 2.11 compile the bundled model to the same program and blob as this machine.

Writes bench/results/scale.json: per size and step the seconds and peak RSS, all measured. A step stopped at
``--deadline`` is recorded as such, with its peak RSS so far, the layers it finished and its measured seconds
per layer.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "scale.json"
BUNDLED_TOKENIZER = ROOT / "quant" / "bundled" / "tiny-llama"

RANDOM_DIMS = {
    "llama-1b-dims-2l": dict(hidden_size=2048, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=8192, vocab_size=32000),
    "llama-1b-dims-4l": dict(hidden_size=2048, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=8192, vocab_size=32000),
    "llama-1b-dims": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=8192, vocab_size=32000),
    "llama-7b-dims-2l": dict(hidden_size=4096, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32,
                             intermediate_size=11008, vocab_size=32000),
    "llama-7b-dims": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                          intermediate_size=11008, vocab_size=32000),
}
SIZES = ["bundled", "smollm2", "llama-1b-dims-2l", "llama-1b-dims-4l"]
QUANTIZE_ARGS = ["--sparsity", "2:4", "--prune-method", "wanda", "--weight-bits", "2", "--weight-method", "rtn",
                 "--act-bits", "8", "--kv-bits", "4", "--group-size", "32", "--calib-samples", "4",
                 "--calib-seqlen", "64", "--eval-tokens", "0", "--device", "cpu"]
# Per-size changes of QUANTIZE_ARGS (none: every size runs the AccLLM configuration; a 2:4 layer graph holds the
# pruned weights as zeros, 4 bytes a weight, so a 7B-dims layer is 0.75 GiB, under protobuf's 2 GiB).
SIZE_ARGS: dict = {}


def quantize_args(size: str) -> list[str]:
    args = list(QUANTIZE_ARGS)
    for flag, value in SIZE_ARGS.get(size.split("-2l")[0], {}).items():
        args[args.index(flag) + 1] = value
    return args

# Runs one accllm command and prints its peak RSS (KiB) as the last line. VmHWM is this process image's own peak:
# getrusage(RUSAGE_SELF).ru_maxrss would keep the launching process's size across fork + exec.
CHILD = ("import json, re, resource, sys\n"
         "from accllm.host.cli import main\n"
         "rc = main(sys.argv[1:])\n"
         "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
         "print('SCALE_RSS ' + json.dumps({'rc': rc, 'self_kib': hwm, "
         "'children_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
         "sys.exit(rc)\n")


def layer_params(d: dict) -> int:
    h, i = d["hidden_size"], d["intermediate_size"]
    kv = h // d["num_attention_heads"] * d["num_key_value_heads"]
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h


def total_params(d: dict) -> int:
    return d["num_hidden_layers"] * layer_params(d) + 2 * d["vocab_size"] * d["hidden_size"] + d["hidden_size"]


def make_random_model(folder: Path, dims: dict, seed: int = 0) -> Path:
    """A random Llama in ``folder``: config, bundled tokenizer, one fp16 safetensors shard per decoder layer."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**dims, max_position_embeddings=2048, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    cfg.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUNDLED_TOKENIZER / f, folder / f)
    g = torch.Generator().manual_seed(seed)
    h, i, n = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    kv = h // dims["num_attention_heads"] * dims["num_key_value_heads"]

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    index, shards = {}, n + 1
    name = "model-{:05d}-of-{:05d}.safetensors"
    outer = {"model.embed_tokens.weight": rnd(dims["vocab_size"], h), "lm_head.weight": rnd(dims["vocab_size"], h),
             "model.norm.weight": torch.ones(h, dtype=torch.half)}
    save_file(outer, str(folder / name.format(1, shards)))
    index.update({k: name.format(1, shards) for k in outer})
    for layer in range(n):
        p = f"model.layers.{layer}."
        t = {p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
             p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
             p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
             p + "mlp.down_proj.weight": rnd(h, i), p + "input_layernorm.weight": torch.ones(h, dtype=torch.half),
             p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.half)}
        save_file(t, str(folder / name.format(layer + 2, shards)))
        index.update({k: name.format(layer + 2, shards) for k in t})
        del t
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return folder


def _vm_hwm_kib(pid: int) -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1))
    except (OSError, AttributeError):
        return 0


def layer_progress(log: Path) -> dict | None:
    """The last tqdm count of a step's log (``desc: n/N [elapsed<...``): how far a step that was stopped got, and
    its measured seconds per layer."""
    text = log.read_text(errors="replace")
    hits = re.findall(r"([\w ]+): +\d+%\|[^|]*\| *(\d+)/(\d+) \[([\d:]+)<", text)
    hits += [(d, n, "", e) for d, n, e in re.findall(r"([\w ]+): (\d+)it \[([\d:]+),", text)]  # no known total
    if not hits:
        return None

    def seconds(elapsed: str) -> int:
        return sum(int(x) * 60 ** i for i, x in enumerate(reversed(elapsed.split(":"))))

    desc, n, total, elapsed = max(hits, key=lambda h: (int(h[1]), seconds(h[3])))
    secs = seconds(elapsed)
    return {"stage": desc.strip(), "layers_done": int(n), "layers": int(total) if total else None, "stage_seconds": secs,
            "seconds_per_layer_measured": round(secs / int(n), 1) if int(n) else None}


def run_step(argv: list[str], log: Path, deadline: float | None = None) -> dict:
    """One accllm command in a fresh interpreter: seconds, peak RSS (GiB), exit status. Its VmHWM is also read
    every second, so a step stopped at ``deadline`` (epoch seconds) still reports its peak so far and how many
    layers it did (labelled: not a finished step)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # tqdm's per-layer progress goes to the step's log
    t0 = time.perf_counter()
    polled, stopped = 0, False
    out_path = log.with_suffix(".out")
    with open(log, "w") as f, open(out_path, "w") as out:
        p = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=out, stderr=f, text=True, env=env)
        while p.poll() is None:
            polled = max(polled, _vm_hwm_kib(p.pid))
            if deadline is not None and time.time() > deadline:
                p.kill()
                p.wait()
                stopped = True
                break
            time.sleep(1)
    seconds = time.perf_counter() - t0
    lines = out_path.read_text().strip().splitlines()
    rss = next((json.loads(x.split(" ", 1)[1]) for x in reversed(lines) if x.startswith("SCALE_RSS ")), None)
    if stopped:
        return {"ok": False, "stopped_at_deadline": True, "seconds": round(seconds, 1),
                "peak_rss_gib_so_far": round(polled / 2**20, 3), "progress": layer_progress(log)}
    if p.returncode != 0 or rss is None:
        tail = log.read_text()[-800:]
        return {"ok": False, "seconds": round(seconds, 1), "rc": p.returncode, "error_tail": tail}
    peak = max(rss["self_kib"], rss["children_kib"], polled) / 2**20
    return {"ok": True, "seconds": round(seconds, 1), "peak_rss_gib": round(peak, 3), "layers": layer_progress(log)}


def machine(label: str | None) -> dict:
    """The machine a measurement ran on, as measured now (cores, memory, load), and what the user calls it."""
    mem = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1))
    out = {"cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "load_average": os.getloadavg()}
    return {"label": label, **out} if label else out


def measure(size: str, work: Path, deadline: float | None = None, label: str | None = None,
            save=lambda rec: None) -> dict:
    """The steps of one size in ``work``; ``save(rec)`` is called with the record after each step."""
    model = size
    rec: dict = {"size": size, "machine": machine(label)}
    if size in RANDOM_DIMS:
        t0 = time.perf_counter()
        model = str(make_random_model(work / "model", RANDOM_DIMS[size]))
        rec["dims"] = RANDOM_DIMS[size]
        rec["params"] = total_params(RANDOM_DIMS[size])
        rec["make_model_seconds"] = round(time.perf_counter() - t0, 1)
    rec["compression"] = " ".join(quantize_args(size))
    steps = [("quantize", ["quantize", model, "-o", str(work / "ckpt"), *quantize_args(size)]),
             ("export", ["export", str(work / "ckpt"), "-o", str(work / "export")]),
             ("compile", ["compile", str(work / "export"), "-o", str(work / "build"), "--target", "kv260"])]
    rec["steps"] = {}
    for step, argv in steps:
        print(f"[{size}] {step} ...", flush=True)
        r = run_step(argv, work / f"{step}.log", deadline)
        rec["steps"][step] = r
        print(f"[{size}] {step}: {json.dumps(r)[:300]}", flush=True)
        save(rec)
        if not r["ok"]:
            break
        if step == "quantize" and size in RANDOM_DIMS:
            shutil.rmtree(work / "model")  # the float model is not needed after quantize (disk: 13.5 GB at 7B)
    done = [r for r in rec["steps"].values() if r["ok"]]
    rec["total_seconds"] = round(sum(r["seconds"] for r in done), 1)
    rec["peak_rss_gib"] = max((r["peak_rss_gib"] for r in done), default=None)
    if (work / "build" / "weights.blob").is_file():
        rec["blob_bytes"] = (work / "build" / "weights.blob").stat().st_size
    if (work / "export").is_dir():
        rec["export_bytes"] = sum(f.stat().st_size for f in (work / "export").glob("*.onnx"))
    rec["machine_at_end"] = machine(label)
    save(rec)
    return rec


def follow(work: Path, seconds: float) -> int:
    """Print the background run's log as it grows, for up to ``seconds``; 0 once it has finished."""
    log, done = work / "scale.log", work / "scale.done"
    pos, t_end = 0, time.time() + seconds
    while True:
        if log.is_file():
            text = log.read_text(errors="replace")
            # tqdm redraws with carriage returns: print the last state of each line
            print("\n".join(ln.rsplit("\r", 1)[-1] for ln in text[pos:].splitlines() if ln.strip()), flush=True)
            pos = len(text)
        if done.is_file():
            print(f"finished: {done.read_text().strip()}")
            return 0
        if time.time() > t_end:
            print(f"still running (log {log})")
            return 3
        time.sleep(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated from bundled, smollm2, {', '.join(RANDOM_DIMS)}")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folders here (default: a deleted temp dir)")
    ap.add_argument("--deadline", default=None, help="HH:MM (UTC): stop a step still running then and record how "
                                                     "far it got (layers done, measured seconds per layer)")
    ap.add_argument("--work", type=Path, default=None, help="the work folder (kept): model, checkpoint, graphs, "
                                                         "build, step logs, record.json (one size)")
    ap.add_argument("--background", action="store_true", help="run in a new session that outlives this command")
    ap.add_argument("--wait", type=float, default=None, help="follow a --background run in --work for up to S s")
    ap.add_argument("--label", default=None, help="what the machine is, for the JSON (e.g. the device machine)")
    a = ap.parse_args()
    if a.background or a.wait is not None:
        if a.work is None:
            ap.error("--background and --wait need --work")
        if a.background:
            a.work.mkdir(parents=True, exist_ok=True)
            (a.work / "scale.done").unlink(missing_ok=True)
            argv = [x for x in sys.argv[1:] if x != "--background"]
            if "--wait" in argv:
                i = argv.index("--wait")
                del argv[i:i + 2]
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
            with open(a.work / "scale.log", "w") as log:
                p = subprocess.Popen(["sh", "-c", '"$@"; echo "exit $?" > "$0"', str(a.work / "scale.done"), *cmd],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
            print(f"started {p.pid} in its own session: {' '.join(cmd)}; log {a.work / 'scale.log'}", flush=True)
        return follow(a.work, a.wait or 0)
    deadline = None
    if a.deadline:
        hh, mm = map(int, a.deadline.split(":"))
        now = datetime.datetime.now(datetime.timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    results = json.loads(a.out.read_text()).get("sizes", {}) if a.out.is_file() else {}
    for size in a.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"scale_{size}_") as tmp:
            work = a.work or ((a.keep / size) if a.keep else Path(tmp))
            for sub in ("model", "ckpt", "export", "build"):  # a previous run's outputs
                shutil.rmtree(work / sub, ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            record = work / "record.json"
            results[size] = measure(size, work, deadline, a.label,
                                    save=lambda rec: record.write_text(json.dumps(rec, indent=1)))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": f"{os.cpu_count()} CPU cores (shared with other work), "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
               "compression": " ".join(QUANTIZE_ARGS), "sizes": results}
        a.out.write_text(json.dumps(doc, indent=1))
        print(f"wrote {a.out}")
    for size, r in results.items():
        steps = "  ".join(f"{k} {v['seconds']} s {v.get('peak_rss_gib', v.get('peak_rss_gib_so_far', '-'))} GiB"
                          + ("" if v["ok"] else " (not finished)") for k, v in r["steps"].items())
        print(f"{size:18s} {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
