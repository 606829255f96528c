"""Shared, disk-cached artefacts of the middle of the flow for the golden/export/compile/csim tests."""
from __future__ import annotations

from pathlib import Path

# The compressed bundled model (issue 3); without it the tests compress the bundled model quickly (RTN).
BUNDLED_COMPRESSED = Path(__file__).resolve().parents[1] / "quant" / "bundled" / "tiny-llama-w2a8kv4"

PROMPTS = ["def main(args):", "import numpy as np\n", "class Model(nn.Module):", "for i in range(10):",
           "The function returns", "if __name__ ==", "# compute the mean of", "return self.", "x = torch.",
           "while True:", "try:\n    ", "print(", "with open(path) as f:", "self.assertEqual(",
           "def __init__(self,", "raise ValueError(", "from typing import", "lambda x:", "@property\ndef",
           "async def fetch("]


def flow_paths(tmp_path_factory):
    from accllm.hls.flow import export_and_compile, quick_checkpoint

    root = tmp_path_factory.getbasetemp() / "accllm_flow"
    ckpt = BUNDLED_COMPRESSED if (BUNDLED_COMPRESSED / "compression.json").is_file() else quick_checkpoint(root / "ckpt")
    onnx_dir, build = export_and_compile(ckpt, root)
    return ckpt, onnx_dir, build


def demo_layout(tmp_path_factory, name: str):
    """A build directory laid out as `accllm demo` leaves it: compiled files with checkpoint/ beside them."""
    ckpt, _, compiled = flow_paths(tmp_path_factory)
    d = tmp_path_factory.mktemp(name)
    for f in ("program.bin", "weights.blob", "hls"):
        (d / f).symlink_to(compiled / f)
    (d / "checkpoint").symlink_to(ckpt)
    return d


def one_thread():
    """Generator for an autouse fixture: the golden model runs thousands of tiny torch ops per token, which
    intra-op threads only slow down (badly so on a shared 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def csim_both_ways(c, ids):
    """The C-simulation ``c`` run token by token and then as one traced prefill of ``ids``: both must give the same
    KV cache bytes and last logits (asserted); returns the prefill's logits (its traces stay readable on ``c``)."""
    import numpy as np

    c.reset()
    for t in ids:
        lt = c.step(t)
    kv_t = c.kv.copy()
    c.reset()
    lb = c.prefill(ids, trace=True)
    assert np.array_equal(c.kv, kv_t) and np.array_equal(lb, lt)
    return lb
