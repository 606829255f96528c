"""The slim board install, measured: ``pip install accllm[board]`` into a fresh virtual environment (numpy, pynq,
tokenizers, pydantic and their dependencies from PyPI; no torch), its size on disk, and the resident memory of
``run.sh`` streaming tokens from a deployed build on a fake Zynq board (the real pynq package imported, its
``Overlay``/``allocate`` opening the protocol-enforcing device of tests/board_fakes.py whose kernel is the
build's C-simulation library). The same run in the full development environment is measured beside it.

    python bench/board_install.py BUILD          # BUILD: a flow build / `accllm demo -o BUILD` output

Writes ``bench/results/board_install.json``. Needs PyPI (pip's ordinary client) for the fresh install.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
HEAVY = ("torch", "transformers", "brevitas", "onnx", "onnxruntime", "qonnx", "hls4ml", "accelerate")


def du(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def top_packages(site: Path, n: int = 12) -> dict[str, float]:
    sizes = {p.name: du(p) if p.is_dir() else p.stat().st_size for p in site.iterdir()
             if not p.name.endswith(".dist-info") and p.name != "__pycache__"}
    return {k: round(v / 2**20, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:n]}


def run_board(bin_dir: Path, deploy: Path, library: Path, work: Path, tokens: int, prompt: str) -> dict:
    """run.sh in a child process; its peak RSS from wait4, its streamed ids and the fake device's report."""
    out, report = work / f"out_{bin_dir.parent.name}.json", work / f"report_{bin_dir.parent.name}.json"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(work), "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": f"{TESTS / 'fake_board'}:{TESTS}", "ACCLLM_FAKE_KERNEL_LIB": str(library),
           "ACCLLM_FAKE_BOARD_REPORT": str(report), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.Popen([str(deploy / "run.sh"), "--prompt", prompt, "--max-tokens", str(tokens), "--ignore-eos",
                          "--json", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"run.sh failed ({p.returncode}):\n{err[-3000:]}")
    got, rep = json.loads(out.read_text()), json.loads(report.read_text())
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(time.perf_counter() - t0, 2),
            "output_ids": got["output_ids"], "time_to_first_token_s": got.get("time_to_first_token_s"),
            "decode_tokens_per_s": got.get("decode_tokens_per_s"), "protocol_errors": rep["errors"],
            "kernel_runs": rep["runs"], "heavy_modules_imported": [m for m in HEAVY if m in rep["modules"]],
            "pynq_imported": "pynq" in rep["modules"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path, help="flow build or `accllm demo -o` output (compiled files + checkpoint)")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prompt", default="def main(args):")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "board_install.json")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(TESTS / "fake_board"))
    from fake_deploy import fake_deploy

    with tempfile.TemporaryDirectory(prefix="accllm_board_") as tmp:
        work = Path(tmp)
        deploy, entry, library = fake_deploy(a.build, work / "recipes", "kv260")
        print(f"deploy folder {deploy} ({du(deploy) / 2**20:.1f} MiB), bitstream entry {entry['name']}")
        dist = work / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), str(ROOT)], check=True)
        wheel = next(dist.glob("accllm-*.whl"))
        venv = work / "board-venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        empty = du(venv)
        print(f"pip install {wheel.name}[board] into a fresh venv (from PyPI) ...")
        t0 = time.perf_counter()
        subprocess.run([venv / "bin" / "pip", "install", "-q", f"{wheel}[board]"], check=True)
        install_s = time.perf_counter() - t0
        site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        freeze = subprocess.run([venv / "bin" / "pip", "freeze"], check=True, capture_output=True, text=True).stdout.splitlines()
        board = run_board(venv / "bin", deploy, library, work, a.tokens, a.prompt)
        print(f"slim: peak RSS {board['peak_rss_mib']} MiB, {board['decode_tokens_per_s']} tokens/s")
        full = run_board(Path(sys.executable).parent, deploy, library, work, a.tokens, a.prompt)
        print(f"full: peak RSS {full['peak_rss_mib']} MiB")
        result = {
            "what": "pip install accllm[board] in a fresh venv; run.sh of a deployed build on a fake KV260 (real pynq "
                    "imported; device = protocol-enforcing fake whose kernel is the build's C-simulation library)",
            "machine": f"{platform.machine()} {platform.python_version()}",
            "build": str(a.build), "tokens": a.tokens, "prompt": a.prompt,
            "slim_install": {"venv_mib": round(du(venv) / 2**20, 1), "site_packages_mib": round(du(site) / 2**20, 1),
                             "added_by_install_mib": round((du(venv) - empty) / 2**20, 1),
                             "pip_install_s": round(install_s, 1), "packages": sorted(freeze),
                             "largest_mib": top_packages(site), "run": board},
            "full_dev_env": {"site_packages_mib": round(du(Path(sysconfig.get_paths()["purelib"])) / 2**20, 1),
                             "run": full},
            "same_tokens_as_full_env": board["output_ids"] == full["output_ids"],
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
