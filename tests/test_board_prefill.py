"""The board runtimes prefill in blocks through the kernel top: the real driver on PYNQ (``PynqIO`` over
``pynq.Overlay`` / ``pynq.allocate``) and on XRT (``XrtKernel`` over ``pyxrt``) drives the protocol-enforcing
device of ``board_fakes`` whose kernel is the bundled build's C-simulation library (``accllm_top``). A prompt is
one kernel run per ``max_tokens`` tokens, its ids synced to the device in the ``tokens`` buffer with ``n_tokens``
and ``pos`` set, and the KV cache and on-chip top-K equal those of token by token."""
import sys
from dataclasses import replace

import numpy as np
import pynq
import pytest
from board_fakes import FakeDevice, fake_pyxrt, parse_link_banks
from flow_fixtures import demo_layout

from accllm.host.control import RegisterKernel
from accllm.host.engine import EngineBackend, EngineDriver


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    from accllm.hls.csim import build_library
    from accllm.host.build import BuildDir
    from accllm.host.image import read_engine_image

    b = demo_layout(tmp_path_factory, "board_prefill")
    return b, build_library(b / "hls"), read_engine_image(BuildDir(b))


class Recorder:
    """The C-simulation kernel, recording what each run was given."""

    def __init__(self, library):
        from accllm.host.csim import library_step

        self.step, self.seen = library_step(library), []

    def __call__(self, arrays, scalars):
        n = scalars["n_tokens"]
        self.seen.append((n, scalars["pos"], [int(t) for t in arrays["tokens"][:4 * n].view("<u4")]))
        self.step(arrays, scalars)


def open_port(kind, img, dev, tmp_path, monkeypatch):
    """The kernel port of ``kind`` on ``dev``, through the runtime's own PynqIO / XrtKernel."""
    from accllm.bitstreams.build import find_hls_top, link_cfg
    from accllm.sim.boards import get_board

    top = find_hls_top()
    if kind == "pynq":
        from test_host_pynq import FakeOverlay

        from accllm.host.mmio import PynqIO

        FakeOverlay.sim, FakeOverlay.loaded = dev, []
        monkeypatch.setattr(pynq, "Overlay", FakeOverlay)
        monkeypatch.setattr(pynq, "allocate", lambda shape, dtype="u4", **kw: dev.allocate(shape, dtype))
        return RegisterKernel(PynqIO(tmp_path / "k.bit", top.name), img.args, protocol="ap_ctrl_hs"), None
    from accllm.host.xrt import XrtKernel

    banks = parse_link_banks(link_cfg(top, get_board("u280")))
    fake = fake_pyxrt(dev, [a.name for a in img.args], banks, top.name)
    monkeypatch.setitem(sys.modules, "pyxrt", fake)
    (tmp_path / "k.xclbin").write_bytes(b"xclbin2\0")
    return XrtKernel(str(tmp_path / "k.xclbin"), top.name, [a.name for a in img.args]), (fake, banks)


@pytest.mark.parametrize("kind", ["pynq", "xrt"])
def test_board_runtime_prefills_in_kernel_runs_of_blocks(kind, build, tmp_path, monkeypatch):
    from accllm.host.backends import open_backend

    path, library, img = build
    T = img.block
    assert img.max_tokens % T == 0 and img.buffers["tokens"] == 4 * img.max_tokens
    cap = 2 * T  # runs of at most 2T tokens (of the kernel's max_tokens): a prompt of 3T + 1 is two runs
    img = replace(img, max_tokens=cap)
    k = Recorder(library)
    dev = FakeDevice(k, img.args, protocol="ap_ctrl_hs" if kind == "pynq" else "ap_ctrl_chain")
    port, xrt = open_port(kind, img, dev, tmp_path, monkeypatch)
    be = EngineBackend(kind, EngineDriver(port, img, timeout_s=5.0))
    if xrt:  # the tokens bo in the HBM channel link.cfg connects its bundle to
        fake, banks = xrt
        assert fake.bank_of[be.driver.buffers["tokens"].device_address] == banks["tokens"]
    ids = [int(x) for x in np.random.default_rng(7).integers(0, img.vocab, cap + T + 1)]
    top_ids, top_vals = be.forward_top(ids, 4)
    assert dev.errors == [] and dev.runs == 2
    assert k.seen == [(cap, 0, ids[:cap]), (T + 1, cap, ids[cap:])]
    next_id = int(top_ids[0])
    be.forward_top([next_id], 4)  # decode: a run of one token at the next position
    assert k.seen[-1] == (1, len(ids), [next_id]) and dev.errors == []
    with open_backend("csim", path) as ref:  # token by token on the C-simulation
        for t in ids:
            ref.driver.step(t, logits=False)
        want_ids, want_vals = ref.driver.top()
        assert np.array_equal(top_ids, want_ids[:4]) and top_vals.tobytes() == want_vals[:4].tobytes()
        ref.driver.step(next_id, logits=False)
        assert be.driver.kv.image() == ref.driver.kv.image() and ref.driver.runs == len(ids) + 1
    assert dev.errors == []


def test_a_run_the_kernel_refuses_is_reported(build, tmp_path, monkeypatch):
    """A driver that believes the kernel takes more tokens per run than it was built for (another bitstream)
    gets the kernel's refusal mark back and says so; the KV cache stays untouched."""
    path, library, img = build
    big = replace(img, max_tokens=2 * img.max_tokens, buffers={**img.buffers, "tokens": 8 * img.max_tokens})
    k = Recorder(library)
    dev = FakeDevice(k, big.args, protocol="ap_ctrl_hs")
    port, _ = open_port("pynq", big, dev, tmp_path, monkeypatch)
    be = EngineBackend("pynq", EngineDriver(port, big, timeout_s=5.0))
    be.forward_top([3, 4], 4)
    kv = be.driver.kv.image()
    with pytest.raises(RuntimeError, match=rf"refused a run of {img.max_tokens + 1} tokens"):
        be.forward_top(list(range(img.max_tokens + 1)), 4)
    assert be.driver.kv.image() == kv and be.driver.kv.pos == 2 and be.driver.fault
    with pytest.raises(ValueError, match=rf"a kernel run takes 1\.\.{big.max_tokens} tokens"):
        be.driver.run([])
    assert dev.errors == []
    # the fake itself sees a start with no tokens, and token ids written but not synced to the device
    be.reset()
    port.set_scalar("n_tokens", 0)
    port.start()
    assert port.wait(1.0) and dev.errors == ["run 2: n_tokens 0 does not fit the tokens buffer "
                                             f"({2 * img.max_tokens} ids)"]
    dev.errors.clear()
    be.driver.buffers["tokens"].sync_to_device = lambda: None
    be.forward_top([9], 4)
    assert any("tokens was written by the host but not synced" in e for e in dev.errors)
