"""The pynq backend's path without a board: manifest choice, verify_bitstream before loading, and the real
driver on PynqIO with ``pynq.Overlay`` / ``pynq.allocate`` replaced by in-process fakes (pynq 4.0 imports on
x86 but cannot open a device). The fakes keep the real call signatures and objects' method names."""
import json

import numpy as np
import pynq
import pytest
from test_host_driver import DIMS, FakeKernel, image

from accllm.bitstreams.manifest import BitstreamMismatch, sha256_file
from accllm.host.board import pynq_io
from accllm.host.engine import EngineBackend, EngineDriver
from accllm.host.mmio import PynqIO, SimIO


def _manifest(tmp_path, *, lanes=16, built=True, corrupt=False, dims=None):
    bit, hwh = tmp_path / "accllm_kv260.bit", tmp_path / "accllm_kv260.hwh"
    bit.write_bytes(b"\x00\x09\x0f\xf0" + bytes(range(200)))
    hwh.write_text("<hwh/>")
    arts = {"bit": {"path": bit.name, "sha256": sha256_file(bit) if built else None},
            "hwh": {"path": hwh.name, "sha256": sha256_file(hwh) if built else None}}
    entry = {"name": "kv260-l16", "board": "kv260", "flow": "vivado", "kernel": "accllm_top",
             "engine": {"lanes": lanes, "group": 32}, "dims": dims or DIMS, "program_format": 1, "blob_format": 1,
             "clock_mhz": 200.0, "built": built, "artifacts": arts, "recipe": "zynq"}
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"format": "accllm-bitstream-manifest-v1", "bitstreams": [entry]}))
    if corrupt:
        bit.write_bytes(bit.read_bytes() + b"!")
    return m


class FakeOverlay:
    """``pynq.Overlay``'s surface the runtime uses: ``ip_dict`` and IP attributes with ``read``/``write``."""

    loaded = []

    def __init__(self, bitfile_name, dtbo=None, download=True, ignore_version=False, device=None, gen_cache=False):
        FakeOverlay.loaded.append((bitfile_name, download))
        self.ip_dict = {"accllm_top_0": {"type": "xilinx.com:hls:accllm_top:1.0"}}
        self.accllm_top_0 = FakeIP(FakeOverlay.sim)


class FakeIP:
    def __init__(self, sim):
        self.sim = sim

    def read(self, offset=0):
        return self.sim.read(offset)

    def write(self, offset, value):
        self.sim.write(offset, value)


@pytest.fixture
def fake_pynq(monkeypatch):
    img = image()
    kernel = FakeKernel(img)
    FakeOverlay.sim, FakeOverlay.loaded = SimIO(kernel), []
    calls = []

    def allocate(shape, dtype="u4", target=None, **kwargs):
        calls.append((shape, np.dtype(dtype)))
        return FakeOverlay.sim.allocate(shape, dtype)

    monkeypatch.setattr(pynq, "Overlay", FakeOverlay)
    monkeypatch.setattr(pynq, "allocate", allocate)
    return img, kernel, calls


def test_pynq_backend_verifies_then_drives_the_kernel(tmp_path, fake_pynq):
    img, kernel, calls = fake_pynq
    io = pynq_io(img, manifest=_manifest(tmp_path), board="kv260")
    assert isinstance(io, PynqIO) and FakeOverlay.loaded == [(str(tmp_path / "accllm_kv260.bit"), True)]
    be = EngineBackend("pynq", EngineDriver(io, img, timeout_s=1.0, poll_s=1e-4))
    logits = be.forward([3, 4, 5])
    assert int(np.argmax(logits)) == 6 and [s[1] for s in kernel.seen] == [0, 1, 2]
    assert sorted(s for s, _ in calls) == sorted([(len(v),) if isinstance(v, bytes) else (v or img.layout.nbytes,)
                                                  for v in img.buffers.values()])
    assert all(dt == np.uint8 for _, dt in calls)


@pytest.mark.parametrize("kw,match", [(dict(corrupt=True), "sha256"), (dict(lanes=32), "lanes"),
                                      (dict(built=False), "unbuilt"), (dict(dims={**DIMS, "hidden": 8}), "hidden")])
def test_bad_bitstream_is_refused_before_the_overlay_loads(tmp_path, fake_pynq, kw, match):
    img, _, _ = fake_pynq
    m = _manifest(tmp_path, **kw)
    with pytest.raises((BitstreamMismatch, ValueError), match=match):
        pynq_io(img, bitstream="kv260-l16", manifest=m, board="kv260")
    assert FakeOverlay.loaded == []


def test_wrong_board_and_no_matching_bitstream(tmp_path, fake_pynq):
    img, _, _ = fake_pynq
    m = _manifest(tmp_path)
    with pytest.raises(BitstreamMismatch, match="board"):
        pynq_io(img, bitstream="kv260-l16", manifest=m, board="zcu104")
    img.header["group"] = 64
    with pytest.raises(ValueError, match="no built bitstream"):
        pynq_io(img, manifest=m)
    assert FakeOverlay.loaded == []


def test_register_map_from_the_hwh_is_checked(fake_pynq):
    """pynq's RegisterMap (built from the .hwh) must put each argument where the driver writes it."""
    from pynq.registers import RegisterMap

    from accllm.host.board import check_register_map

    img, _, _ = fake_pynq

    def regmap(shift):
        desc = {a.name + ("_1" if a.pointer else ""): {"address_offset": a.offset + shift, "access": "read-write",
                                                         "size": 32, "description": ""} for a in img.args}
        rm = RegisterMap.create_subclass("accllm_top", desc)(np.zeros(64, np.uint32))
        return type("IP", (), {"register_map": rm})()

    check_register_map(regmap(0), img.args)
    with pytest.raises(ValueError, match="driver expects"):
        check_register_map(regmap(4), img.args)
