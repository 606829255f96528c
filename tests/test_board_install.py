"""The slim board install: the wheel in a fresh virtual environment with only the base dependencies (numpy,
tokenizers, pydantic: what ``pip install accllm[board]`` adds beside pynq) runs a deployed build on a fake
Zynq board — the real driver and PynqIO over the protocol-enforcing device of ``board_fakes``, whose kernel is
the build's C-simulation library — and gives the C-simulation's tokens without torch, transformers or brevitas
installed. (Sizes and memory of the real ``accllm[board]`` install with pynq: bench/board_install.py.)"""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from flow_fixtures import demo_layout

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "fake_board"))
# The distributions a board install gets besides pynq: accllm's base requirements and theirs (tokenizers'
# huggingface-hub is only needed to download tokenizers, which the runtime never does).
SLIM = ["numpy", "numpy.libs", "tokenizers", "pydantic", "pydantic_core", "annotated_types", "typing_extensions",
        "typing_inspection"]
HEAVY = {"torch", "transformers", "brevitas", "onnx", "onnxruntime", "qonnx", "hls4ml", "accelerate", "safetensors"}
PROMPT = "def main(args):"


def slim_venv(tmp_path) -> Path:
    """A venv holding the accllm wheel and, through a folder of links, only the slim distributions."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths()["purelib"])
    links = tmp_path / "slim-site"
    links.mkdir()
    for p in site.iterdir():
        top = p.name.split("-")[0] if p.name.endswith(".dist-info") else p.name.removesuffix(".py")
        if top in SLIM:
            (links / p.name).symlink_to(p)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "slim.pth").write_text(f"{links}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q",
                    str(next(dist.glob("accllm-*.whl")))], check=True)
    return venv


def test_slim_install_runs_a_deployed_build_on_a_fake_board(tmp_path, tmp_path_factory):
    from fake_deploy import fake_deploy

    from accllm.host.backends import open_backend
    from accllm.host.build import BuildDir
    from accllm.host.generate import Generation
    from accllm.host.sampling import SamplingParams

    build = demo_layout(tmp_path_factory, "board_build")
    deploy, _, library = fake_deploy(build, tmp_path / "recipes", "kv260")
    assert (deploy / "manifest.json").is_file() and (deploy / "run.sh").is_file()

    with open_backend("csim", build) as be:  # the reference: the C-simulation in this (full) environment
        gen = Generation(be, BuildDir(build).tokenizer(), PROMPT, SamplingParams(max_tokens=6, temperature=0))
        want = [ev.token_id for ev in gen if ev.token_id is not None]

    venv = slim_venv(tmp_path)
    board = tmp_path / "board"  # the deploy folder as copied to the board (no links into this machine)
    subprocess.run(["cp", "-rL", str(deploy), str(board)], check=True)
    out, report = tmp_path / "out.json", tmp_path / "report.json"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": f"{TESTS / 'fake_board'}:{TESTS}", "ACCLLM_FAKE_KERNEL_LIB": str(library),
           "ACCLLM_FAKE_BOARD_REPORT": str(report)}
    r = subprocess.run([str(board / "run.sh"), "--prompt", PROMPT, "--max-tokens", "6", "--json", str(out)],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    rep = json.loads(report.read_text())
    # the prompt in one kernel run (it is shorter than a run's max_tokens), then 5 decode runs
    assert rep["errors"] == [] and rep["runs"] == 1 + 5 and len(got["prompt_ids"]) > 1
    assert got["output_ids"] == want
    assert not HEAVY & set(rep["modules"]), HEAVY & set(rep["modules"])
    # Nothing heavy is even importable there, and the toolchain's commands say what they need.
    probe = subprocess.run([venv / "bin" / "python", "-c", "import importlib.util as u; print([m for m in "
                            f"{sorted(HEAVY)!r} if u.find_spec(m)])"], env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", probe.stderr
    q = subprocess.run([venv / "bin" / "accllm", "quantize", "x", "-o", "y"], env=env, capture_output=True, text=True)
    assert q.returncode == 2 and "accllm[flow]" in q.stderr and "Traceback" not in q.stderr
    # The wheel's base requirements are exactly the slim set (the toolchain is the `flow` extra).
    reqs = subprocess.run([venv / "bin" / "python", "-c", "import importlib.metadata as m; "
                           "print('\\n'.join(r for r in m.requires('accllm') if 'extra ==' not in r))"],
                          env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert sorted(r.split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs if r) == ["numpy", "pydantic", "tokenizers"]
