"""Compile time and peak memory of `accllm compile` on the bundled model: the graph-pattern compiler (this tree)
beside the compiler of an earlier revision (default: the last one that took dimensions from model.json and
carried the program as a fixed template). Each run is a fresh process; peak memory is its maximum resident set.

    python bench/compile_onnx.py [--checkpoint DIR] [--before-rev 5f5c98d] [--repeats 3]
                                 [--out bench/results/compile_onnx.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "quant" / "bundled" / "tiny-llama-w2a8kv4"


# Since that revision get_board moved, the blob's linear section became the weight stream, and the exporter
# (through quant/) writes the 2:4 mask as a constant sub-graph with ConstantOfShape and Pad, which the old
# allow-list lacks: the old compiler runs with those names updated.
MOVED = {"from accllm.sim.perf import get_board": "from accllm.sim.boards import get_board",
         "pack_linear_beats": "pack_linear_stream", '.{name}.beats"': '.{name}.stream"',
         '"Constant": "constant",': '"Constant": "constant", "ConstantOfShape": "constant", "Pad": "constant",'}


def _old_modules(rev: str):
    """hls/export.py and hls/compiler.py as they were at ``rev``, importable side by side with this tree's."""
    mods = {}
    for name in ("export", "compiler"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:hls/{name}.py"], capture_output=True, text=True,
                             check=True).stdout
        src = src.replace("from accllm.hls.export import", "from accllm_before_export import")
        for a, b in MOVED.items():  # modules moved since
            src = src.replace(a, b)
        mod = types.ModuleType(f"accllm_before_{name}")
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{rev}:hls/{name}.py", "exec"), mod.__dict__)  # noqa: S102 - our own history
        mods[name] = mod
    return mods["export"], mods["compiler"]


def measure(which: str, ckpt: Path, work: Path, rev: str) -> dict:
    """One run in this process: export (not timed) then compile (timed)."""
    import torch

    from accllm.quant.checkpoint import load_compressed

    torch.set_num_threads(1)
    if which == "before":
        export, compiler = _old_modules(rev)
    else:
        from accllm.hls import compiler, export
    onnx_dir = work / "onnx"
    if not (onnx_dir / export.MANIFEST).is_file():
        export.export_model(load_compressed(ckpt)[0], onnx_dir, progress=False)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    r = compiler.compile_export(onnx_dir, work / "build", progress=False)
    seconds = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"compile_seconds": seconds, "peak_rss_mib": rss1 / 1024, "peak_rss_before_compile_mib": rss0 / 1024,
            "instructions": r.instructions, "blob_payload_bytes": r.blob_bytes,
            "program_sha256": _sha(work / "build" / "program.bin"), "blob_sha256": _sha(work / "build" / "weights.blob")}


def _sha(path: Path) -> str:
    """sha256 of a program's or blob's payload (what the engine reads; the metadata holds paths and times)."""
    from accllm.hls import blob, container, program

    payload = program.read_program(path)[2] if path.name == "program.bin" else blob.read_blob(path)[1]
    return container.sha256(payload)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=BUNDLED)
    ap.add_argument("--before-rev", default="5f5c98d")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compile_onnx.json")
    ap.add_argument("--one", nargs=2, metavar=("WHICH", "WORK"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.one[0], a.checkpoint, Path(a.one[1]), a.before_rev)))
        return 0
    from tqdm import tqdm

    res = {"machine": platform.processor() or platform.machine(), "checkpoint": str(a.checkpoint),
           "before_rev": a.before_rev, "repeats": a.repeats,
           "note": "2-core machine shared with other jobs: compare before/after of the same run only"}
    work = Path(tempfile.mkdtemp(prefix="accllm_compile_onnx_"))
    runs = {"before": [], "after": []}
    with tqdm(total=2 * a.repeats, desc="compile runs") as bar:
        for _ in range(a.repeats):  # interleaved, so both see the same machine load
            for which in ("before", "after"):
                p = subprocess.run([sys.executable, __file__, "--checkpoint", str(a.checkpoint), "--before-rev",
                                    a.before_rev, "--one", which, str(work / which)], capture_output=True, text=True)
                if p.returncode:
                    raise RuntimeError(f"{which} run failed:\n{p.stderr[-3000:]}")
                runs[which].append(json.loads(p.stdout.strip().splitlines()[-1]))
                bar.update(1)
    for which, rs in runs.items():
        res[which] = {"compile_seconds_median": statistics.median(r["compile_seconds"] for r in rs),
                      "compile_seconds": [round(r["compile_seconds"], 3) for r in rs],
                      "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rs),
                      "peak_rss_before_compile_mib_max": max(r["peak_rss_before_compile_mib"] for r in rs),
                      **{k: rs[0][k] for k in ("instructions", "blob_payload_bytes", "program_sha256", "blob_sha256")}}
    res["same_program_and_blob"] = all(res["before"][k] == res["after"][k] for k in ("program_sha256", "blob_sha256"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
