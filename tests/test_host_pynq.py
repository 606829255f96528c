"""The pynq backend's path without a board: manifest choice, verify_bitstream before loading, and the real
driver on PynqIO with ``pynq.Overlay`` / ``pynq.allocate`` replaced by in-process fakes (pynq 4.0 imports on
x86 but cannot open a device) over the protocol-enforcing device of ``board_fakes``. The fakes keep the real
call signatures and objects' method names."""
import json

import numpy as np
import pynq
import pytest
from board_fakes import FakeDevice
from test_host_driver import DIMS, EchoKernel, image

from accllm.bitstreams.manifest import BitstreamMismatch, sha256_file
from accllm.host.board import open_kernel
from accllm.host.control import RegisterKernel
from accllm.host.engine import DeviceTimeout, EngineBackend, EngineDriver
from accllm.host.mmio import PynqIO


def pynq_io(img, **kw):
    return open_kernel("pynq", img, **kw)


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
    engine = None  # a board_fakes.FakeEngine: the block design's engine cell beside the kernel

    def __init__(self, bitfile_name, dtbo=None, download=True, ignore_version=False, device=None, gen_cache=False):
        FakeOverlay.loaded.append((bitfile_name, download))
        self.bitfile_name = bitfile_name
        self.ip_dict = {"accllm_top_0": {"type": "xilinx.com:hls:accllm_top:1.0"}}
        self.accllm_top_0 = FakeIP(FakeOverlay.sim)
        if FakeOverlay.engine is not None:
            from accllm.bitstreams.engine_kernel import CELL, KERNEL

            self.ip_dict[CELL] = {"type": f"xilinx.com:module_ref:{KERNEL}:1.0"}
            setattr(self, CELL, FakeIP(FakeOverlay.engine))

    def download(self, dtbo=None):
        FakeOverlay.loaded.append((self.bitfile_name, True))
        FakeOverlay.sim.reload()


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
    kernel = EchoKernel()
    FakeOverlay.sim, FakeOverlay.loaded = FakeDevice(kernel, img.args, protocol="ap_ctrl_hs"), []
    calls = []

    def allocate(shape, dtype="u4", target=None, **kwargs):
        calls.append((shape, np.dtype(dtype)))
        return FakeOverlay.sim.allocate(shape, dtype)

    monkeypatch.setattr(pynq, "Overlay", FakeOverlay)
    monkeypatch.setattr(pynq, "allocate", allocate)
    return img, kernel, calls


def test_pynq_backend_verifies_then_drives_the_kernel(tmp_path, fake_pynq):
    img, kernel, calls = fake_pynq
    port = pynq_io(img, manifest=_manifest(tmp_path), board="kv260")
    assert isinstance(port, RegisterKernel) and isinstance(port.io, PynqIO)
    assert port.protocol == "ap_ctrl_hs"  # a Vivado-flow (Zynq) kernel
    assert FakeOverlay.loaded == [(str(tmp_path / "accllm_kv260.bit"), True)]
    be = EngineBackend("pynq", EngineDriver(port, img, timeout_s=1.0))
    logits = be.forward([3, 4, 5])
    assert int(np.argmax(logits)) == 6 and [s[1] for s in kernel.seen] == [0, 1, 2]
    assert FakeOverlay.sim.errors == []
    assert sorted(s for s, _ in calls) == sorted([(len(v),) if isinstance(v, bytes) else (v or img.layout.nbytes,)
                                                  for v in img.buffers.values()])
    assert all(dt == np.uint8 for _, dt in calls)


def test_pynq_timeout_then_reset_downloads_the_bitstream_again(tmp_path, fake_pynq):
    img, kernel, _ = fake_pynq
    be = EngineBackend("pynq", EngineDriver(pynq_io(img, manifest=_manifest(tmp_path), board="kv260"), img,
                                            timeout_s=0.1, grace_s=0.05))
    be.forward([1])
    kernel.hang = True
    with pytest.raises(DeviceTimeout):
        be.forward([2])
    kernel.hang = False
    be.reset()
    assert len(FakeOverlay.loaded) == 2 and FakeOverlay.sim.reloads == 1  # Overlay.download() again
    assert int(np.argmax(be.forward([8]))) == 9 and kernel.seen[-1] == (8, 0, 0, 1)
    assert FakeOverlay.sim.errors == []


def test_an_xclbin_is_refused_by_pynq(tmp_path, fake_pynq):
    img, _, _ = fake_pynq
    m = _manifest(tmp_path)
    data = json.loads(m.read_text())
    e = data["bitstreams"][0]
    e.update(flow="vitis", board="u280", recipe="u280", artifacts={"xclbin": e["artifacts"]["bit"]})
    m.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="--backend xrt"):
        pynq_io(img, bitstream="kv260-l16", manifest=m)
    assert FakeOverlay.loaded == []


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


@pytest.mark.parametrize("board,backend", [("kv260", "pynq"), ("u280", "xrt")])
def test_deploy_folder_carries_the_manifest_its_run_script_names(tmp_path, board, backend):
    from accllm.bitstreams.build import find_hls_top, manifest_entry
    from accllm.bitstreams.manifest import load_manifest, verify_bitstream
    from accllm.host.steps import deploy_folder
    from accllm.sim.boards import get_board

    compiled, ckpt = tmp_path / "compile", tmp_path / "ckpt"
    compiled.mkdir()
    ckpt.mkdir()
    for f in ("program.bin", "weights.blob"):
        (compiled / f).write_bytes(b"x" * 10)
    (ckpt / "tokenizer.json").write_text("{}")
    entry = manifest_entry(find_hls_top(), get_board(board), 16, 32, DIMS, 1, 1, 1, block=1)
    # Not recorded yet: the deploy folder gets the unbuilt entry, and the runtime refuses it saying what to do.
    out = tmp_path / "deploy"
    out.mkdir()
    files, metrics = deploy_folder(out, compiled, ckpt, board, entry, recipes=tmp_path / "none.json")
    assert metrics == {"bitstream": entry["name"], "bitstream_built": False}
    script = (out / "run.sh").read_text()
    assert f"--backend {backend} --board {board}" in script and "ACCLLM_MANIFEST:-manifest.json" in script
    m = load_manifest(out / "manifest.json")
    with pytest.raises(BitstreamMismatch, match="unbuilt"):
        verify_bitstream(m.entry(entry["name"]), out / "x", {})
    # Recorded: the artifacts travel with it, at the paths the manifest gives relative to itself.
    recipes = tmp_path / "bitstreams"
    for a in entry["artifacts"].values():
        (recipes / a["path"]).parent.mkdir(parents=True, exist_ok=True)
        (recipes / a["path"]).write_bytes(b"bits")
    from accllm.bitstreams.manifest import BitstreamEntry, Manifest, record_build, save_manifest

    rec = Manifest(bitstreams=[BitstreamEntry.model_validate(entry)])
    record_build(rec, entry["name"], recipes)
    save_manifest(rec, recipes / "manifest.json")
    out2 = tmp_path / "deploy2"
    out2.mkdir()
    files, metrics = deploy_folder(out2, compiled, ckpt, board, entry, recipes=recipes / "manifest.json")
    assert metrics["bitstream_built"] is True
    e = load_manifest(out2 / "manifest.json").entry(entry["name"])
    for a in e.artifacts.values():
        assert (out2 / a.path).read_bytes() == b"bits" and a.path in files
