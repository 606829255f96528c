"""bench/chat.py on the bundled model's build (plain template): golden and C-sim give the same tokens with 0
integer mismatches on the chat path (prefill blocks, then decode), and a corrupted integer is counted in its
layer. SmolLM2 runs of the bench are measurements (bench/results/chat_smollm2*.json), not tests."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flow_fixtures import demo_layout, one_thread

ROOT = Path(__file__).resolve().parent.parent

_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return demo_layout(tmp_path_factory, "bench_chat_build")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_chat", ROOT / "bench" / "chat.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chat_bench_runs_golden_and_csim_on_the_same_tokens(build, tmp_path):
    out = tmp_path / "chat.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "chat.py"), "--build", str(build), "--prompts", "2",
                           "--max-tokens", "4", "--transcript-tokens", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"wrote {out}" in proc.stdout
    r = json.loads(out.read_text())
    s, tr = r["summary"], r["summary"]["integer_trace"]
    assert s["prompts_same_tokens"] == "2/2" and all(p["csim_ids"] == p["golden_ids"] for p in r["prompts"])
    assert tr["integer_mismatches"] == 0 and tr["integers_compared"] > 100_000 and tr["lm_head_mismatches"] == 0
    assert len(tr["mismatches_per_layer"]) == json.loads(
        (Path(build) / "checkpoint" / "config.json").read_text())["num_hidden_layers"]
    assert s["csim_time_to_first_token_s_median"] > 0
    assert [t["user"] for t in r["transcript"]["turns"]] == _bench().TRANSCRIPT


def test_traced_chat_path_counts_a_corrupted_integer_in_its_layer(build):
    from accllm.hls.csim import CSim
    from accllm.host.build import BuildDir
    from accllm.sim.golden import GoldenModel

    b = BuildDir(build)
    gold, sim = GoldenModel.load(b.checkpoint()), CSim(b.path)
    ids = b.tokenizer().encode("user: hi\nassistant:")
    clean = _bench().traced_chat_path(sim, gold, ids, 3)
    assert clean["integer_mismatches"] == 0 and clean["same_tokens"] and len(clean["golden_ids"]) == 3

    real = sim.layer_trace

    def corrupted(layer):
        t = real(layer)
        if layer == 1:
            t[5] += 1
        return t

    sim.layer_trace = corrupted
    r = _bench().traced_chat_path(sim, gold, ids, 3)
    assert r["mismatches_per_layer"][1] == 2 and r["integer_mismatches"] == 2  # two decode steps, one each
    assert np.count_nonzero(r["mismatches_per_layer"]) == 1
