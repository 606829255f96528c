"""The engine image with the LM head section (DENSE W4, after every decoder linear of each channel, the program's
linear layers * 7), read back through the co-simulation's section table; and the image without a head."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from accllm.hls import engine_image as ei
from accllm.hw import engine_native
from accllm.sim import golden_core as gc
from accllm.sim import weight_stream as ws
from accllm.sim.boards import get_board
from accllm.sim.dims import Dims
from accllm.sim.golden import LINEARS, LinearInts

DIMS = Dims(vocab=96, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128, eps=1e-5, group=32,
            sinks=4, window=12, sink_rotation=False, sparse=False)


def _lin(rng, n, k, wbits):
    wm = gc.wmax(wbits)
    return LinearInts(torch.from_numpy(rng.integers(0, wm + 1, (n, k))),
                      torch.from_numpy(rng.integers(0, wm + 1, (n, k // DIMS.group))),
                      torch.from_numpy(rng.standard_normal((n, k // DIMS.group)).astype(np.float32)))


def _weights(rng, head: bool):
    linears = [{name: _lin(rng, *DIMS.linear_shape(name), 2) for name in LINEARS} for _ in range(DIMS.layers)]
    return SimpleNamespace(dims=DIMS, linears=linears,
                           lm_head_ints=_lin(rng, DIMS.vocab, DIMS.hidden, ws.HEAD_WBITS) if head else None)


@pytest.mark.parametrize("head", [True, False])
def test_head_section_reads_back(tmp_path, head):
    rng = np.random.default_rng(1)
    w = _weights(rng, head)
    m = ei.write_engine_image(tmp_path, w, get_board("kv260"), lanes=16)
    assert m == json.loads((tmp_path / ei.MAP_FILE).read_text())
    image = (tmp_path / ei.IMAGE_FILE).read_bytes()
    n, table = engine_native.section_table(m)
    assert n == DIMS.layers * len(LINEARS) + int(head)
    heads = [s for s in m["sections"] if s["name"] == ei.HEAD_NAME]
    assert bool(heads) == head
    for ch in range(m["channels"]):  # the head follows every decoder section of its channel
        secs = [s for s in m["sections"] if s["channel"] == ch]
        assert [s["offset"] for s in secs] == sorted(s["offset"] for s in secs)
    fmt4 = ws.StreamFormat(**dict(m["format"], wbits=4))
    a = rng.integers(-128, 128, DIMS.hidden)
    for s in heads:
        assert (s["mode"], s["wbits"]) == ("dense", 4)
        assert tuple(table[n - 1, s["channel"]]) == (s["offset"], *s["rows"])
        r0, r1 = s["rows"]
        if r1 == r0:
            continue
        start = m["channel_offsets"][s["channel"]] + s["offset"]
        got = gc.stream_acc(image[start: start + s["nbytes"]], ws.MODE_DENSE, fmt4, r1 - r0, DIMS.hidden, a)
        want = gc.dense_w2a8(a, w.lm_head_ints.codes[r0:r1], w.lm_head_ints.zeros[r0:r1], DIMS.group, 4)
        assert torch.equal(got, want)
