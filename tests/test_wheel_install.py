"""The built wheel, installed into a fresh virtual environment, carries the bundled model and corpus and
runs the CLI from its own console script (dependencies are borrowed from the test environment)."""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_into_fresh_venv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
                   check=True)
    wheel = next(dist.glob("accllm-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # A plain path line in a .pth adds the test environment's packages (torch, transformers, ...) but does
    # not run that environment's own .pth files, so the editable install of accllm stays invisible.
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)
    where = subprocess.run([py, "-c", "import accllm.quant.model as m; print(m.__file__, m.BUNDLED_MODEL.is_dir())"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert where[0].startswith(purelib) and where[1] == "True"
    out = tmp_path / "e.json"
    subprocess.run([venv / "bin" / "accllm", "eval", "--max-tokens", "400", "--json", str(out)],
                   check=True, cwd=tmp_path)
    assert json.loads(out.read_text())["tokens"] == 399
