"""bench/engine.py in its CI configuration (bundled model dims on KV260): the Verilated engine runs every linear of
a decode token's layer and the LM head against the memory model, exact against the golden core, and the token
figures follow from the measured operations and the format's layout."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None, reason="needs g++ and make")
def test_engine_bench_small(tmp_path):
    out = tmp_path / "engine.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "engine.py"), "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    sim, tok = r["simulated"], r["token"]
    assert sim["mismatches"] == 0 and not sim["axi_errors"]
    assert sim["max_outstanding_bursts"] >= 2
    ops = {o["name"]: o for o in sim["operations"]}
    assert set(ops) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    layer = sum(o["cycles"] for n, o in ops.items() if n != "lm_head")
    from accllm.sim.boards import load_model_shape

    model = load_model_shape("bundled")
    assert tok["cycles"] == model.layers * layer + ops["lm_head"]["cycles"]
    # bytes per token: the layout of the format; words read by the simulated channel: its sections exactly
    from accllm.sim import weight_stream as ws

    e = r["engine"]
    fmt = ws.StreamFormat(e["wbits"], e["group"], e["lanes"], e["cores"], e["channel_bits"])
    assert tok["bytes"] == ws.layout(model, fmt, e["channels"], sparse=True, lm_head=True).nbytes()
    for name, n, k in model.linears():
        r0, r1 = ws.channel_rows(n, fmt.cores, e["channels"])[0]
        assert ops[name]["words"] == ws.section_words(ws.MODE_SPARSE, fmt, r1 - r0, k)
    assert 0.8 < sim["memory_utilization"] <= 1.0
    assert "wrote" in proc.stdout
    # block mode: the layer's linears on nt = T/4 .. T vectors, exact, each reading what decode reads once
    blk = r["block"]
    assert blk["mismatches"] == 0 and {b["nt"] for b in blk["operations"]} == {e["block"] // 4, e["block"] // 2, e["block"]}
    assert all(b["words"] == b["words_nt1"] for b in blk["operations"])
    assert all(b["cycles"] >= b["nt"] * b["beats"] for b in blk["operations"])
    assert 0.95 < r["prefill"]["beat_cycles_fitted"] < 1.2
    head = ops["lm_head"]
    assert head["words"] == ws.section_words(ws.MODE_DENSE, ws.StreamFormat(4, e["group"], e["lanes"], e["cores"],
                                                                          e["channel_bits"]),
                                             head["rows_channel0"], head["k"])
