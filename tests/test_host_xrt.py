"""The xrt backend (Alveo U280 through XRT's pyxrt) without a card: the real driver and XrtKernel on an API-level
fake of pyxrt (``board_fakes.fake_pyxrt``) whose compute unit is the protocol-enforcing ap_ctrl_chain device.
The memory bank of each argument comes from the link.cfg the U280 recipe generates for the real kernel top."""
import json
import sys

import numpy as np
import pytest
from board_fakes import FakeDevice, fake_pyxrt, parse_link_banks

from accllm.bitstreams.build import find_hls_top, link_cfg
from accllm.bitstreams.manifest import sha256_file
from accllm.host.board import open_kernel
from accllm.host.engine import DeviceNotIdle, DeviceTimeout, EngineBackend, EngineDriver
from accllm.host.image import EngineImage, kernel_args, vitis_arg_offsets
from accllm.host.xrt import XrtKernel
from accllm.sim.boards import get_board
from accllm.sim.kv_layout import KVLayout

VOCAB = 40
LAYOUT = KVLayout(layers=2, kv_heads=2, head_dim=8, sinks=2, window=3)
DIMS = {"vocab": VOCAB, "hidden": 8, "layers": 2}
PROGRAM = bytes(range(7, 256)) * 2
BLOB = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
MAX_TOKENS = 4  # tokens one kernel run takes


def image():
    """The real kernel's arguments (read from the HLS top the compiler writes) with small buffers."""
    return EngineImage(header={"program_format": 1, "blob_format": 1, "lanes": 16, "group": 32, "block": 1,
                               "dims": DIMS},
                       args=vitis_arg_offsets(kernel_args()),
                       buffers={"program": PROGRAM, "blob": BLOB, "kv": LAYOUT.nbytes, "tokens": 4 * MAX_TOKENS,
                                "logits": 4 * VOCAB, "topk": 128, "trace": 64},
                       kv_arg="kv", logits_arg="logits", vocab=VOCAB, layout=LAYOUT,
                       scalars={"n_tokens": "n_tokens", "pos": "pos"},
                       constants={"n_instr": 8, "logits_en": 1, "trace_en": 0},
                       tokens_arg="tokens", max_tokens=MAX_TOKENS, block=2)


class Kernel:
    """A run of n_tokens ids from the tokens buffer; logits one-hot at 3 x the last id."""

    def __init__(self):
        self.seen, self.hang = [], False

    def __call__(self, arrays, scalars):
        assert bytes(arrays["program"]) == PROGRAM and bytes(arrays["blob"]) == BLOB and scalars["n_instr"] == 8
        n = scalars["n_tokens"]
        assert 1 <= n <= MAX_TOKENS, n
        ids = tuple(int(t) for t in arrays["tokens"][:4 * n].view("<u4"))
        self.seen.append((ids, scalars["pos"]))
        if self.hang:
            return "hang"
        logits = arrays["logits"].view(np.float32)
        logits[:] = 0
        logits[(ids[-1] * 3) % VOCAB] = 1.0


@pytest.fixture
def xrt(tmp_path, monkeypatch):
    top = find_hls_top()
    banks = parse_link_banks(link_cfg(top, get_board("u280")))
    assert set(banks) == set(top.m_axi)
    img, k = image(), Kernel()
    dev = FakeDevice(k, img.args, protocol="ap_ctrl_chain")
    fake = fake_pyxrt(dev, [a.name for a in img.args], banks, top.name)
    monkeypatch.setitem(sys.modules, "pyxrt", fake)
    xclbin = tmp_path / "u280" / "accllm_u280.xclbin"
    xclbin.parent.mkdir()
    xclbin.write_bytes(b"xclbin2\0" + bytes(range(100)))
    entry = {"name": "u280-test", "board": "u280", "flow": "vitis", "kernel": top.name,
             "engine": {"lanes": 16, "group": 32}, "dims": DIMS, "program_format": 1, "blob_format": 1,
             "clock_mhz": 225.0, "built": True, "recipe": "u280",
             "artifacts": {"xclbin": {"path": "u280/accllm_u280.xclbin", "sha256": sha256_file(xclbin)}}}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": "accllm-bitstream-manifest-v1", "bitstreams": [entry]}))
    return img, k, dev, fake, banks, manifest


def open_backend(img, manifest, timeout_s=1.0):
    port = open_kernel("xrt", img, manifest=manifest, board="u280")
    return EngineBackend("xrt", EngineDriver(port, img, timeout_s=timeout_s, grace_s=0.05))


def test_xrt_backend_puts_each_buffer_in_its_bank_and_runs(xrt):
    img, k, dev, fake, banks, manifest = xrt
    be = open_backend(img, manifest)
    assert isinstance(be.driver.kernel, XrtKernel) and fake.loaded == [str(manifest.parent / "u280/accllm_u280.xclbin")]
    for name, buf in be.driver.buffers.items():  # bo allocated with kernel.group_id(arg) = its HBM channel
        assert fake.bank_of[buf.device_address] == banks[name]
    assert len(set(banks.values())) == len(banks)  # every m_axi port in its own bundle, on its own channel
    logits = be.forward([1, 2, 5, 6, 7, 11])  # runs of at most MAX_TOKENS: the tokens bo synced before each
    assert int(np.argmax(logits)) == 33 and k.seen == [((1, 2, 5, 6), 0), ((7, 11), 4)]
    assert dev.errors == [] and dev.runs == 2 and dev.state == "idle"  # XRT answered each ap_done (chain)
    be.reset()
    be.forward([4])
    assert k.seen[-1] == ((4,), 0) and dev.errors == []
    with pytest.raises(ValueError, match="a kernel run takes 1..4 tokens"):
        be.driver.run([1] * 5)
    assert dev.runs == 3 and dev.errors == []


def test_the_fake_catches_a_wrong_bank_and_a_missing_sync(xrt, monkeypatch):
    img, k, dev, fake, banks, manifest = xrt
    monkeypatch.setattr(fake.kernel, "group_id", lambda self, i: 0)  # every bo in HBM[0]
    be = open_backend(img, manifest)
    be.forward([1])
    assert any("blob: bo in memory group 0" in e for e in dev.errors)
    dev.errors.clear()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "pyxrt", fake)
    be = open_backend(img, manifest)
    be.driver.buffers["logits"].sync_from_device = lambda: None
    be.forward([1])
    be.forward([2])
    assert any("logits of the previous run was never synced" in e for e in dev.errors)


def test_xrt_timeout_recovery(xrt):
    img, k, dev, fake, banks, manifest = xrt
    be = open_backend(img, manifest, timeout_s=0.1)
    be.forward([1])
    k.hang = True
    with pytest.raises(DeviceTimeout):
        be.forward([2])
    with pytest.raises(DeviceNotIdle, match="xbutil reset"):  # still running: only a card reset helps
        be.reset()
    dev.finish_hung()
    k.hang = False
    be.reset()
    assert int(np.argmax(be.forward([3]))) == 9 and k.seen[-1] == ((3,), 0) and dev.errors == []


def test_xrt_needs_pyxrt_and_a_vitis_bitstream(xrt, monkeypatch, tmp_path):
    img, _, _, _, _, manifest = xrt
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # not installed
    with pytest.raises(ImportError, match="pyxrt"):
        open_kernel("xrt", img, manifest=manifest)
    data = json.loads(manifest.read_text())
    e = data["bitstreams"][0]
    e.update(flow="vivado", board="kv260", recipe="zynq",
             artifacts={"bit": e["artifacts"]["xclbin"], "hwh": e["artifacts"]["xclbin"]})
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="--backend pynq"):
        open_kernel("xrt", img, bitstream="u280-test", manifest=manifest)
