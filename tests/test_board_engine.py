"""A bitstream with the engine RTL beside the HLS kernel (manifest ``engine_rtl``): before the first kernel run the
board runtimes check the engine's INFO / T against the build's engine image, load each channel's region of
``weights.engine`` into a buffer in that channel's memory (XRT: the bank link.cfg connects the channel's master to;
PYNQ: DDR through the HP ports), sync it and write its address to the channel's REGION register. The real driver,
PynqIO / XrtKernel run on the protocol-enforcing fakes of ``board_fakes`` (FakeEngine refuses a kernel start
before every channel is placed). The kernel model here only records its runs: the fake board runs the C-simulation
library, which computes linears itself, so the engine's reads of these regions are not simulated end to end."""
import json
import sys
from types import SimpleNamespace

import numpy as np
import pynq
import pytest
from board_fakes import FakeDevice, FakeEngine, fake_pyxrt, parse_link_banks
from flow_fixtures import flow_paths
from test_host_pynq import FakeOverlay

from accllm.bitstreams import engine_kernel as ek
from accllm.bitstreams.build import find_hls_top, format_versions, link_cfg, manifest_entry
from accllm.bitstreams.manifest import BitstreamMismatch, sha256_file
from accllm.hls.engine_image import IMAGE_FILE
from accllm.host.board import open_kernel
from accllm.host.engine import EngineBackend, EngineDriver, EngineMismatch
from accllm.sim import engine_regs as er
from accllm.sim.boards import get_board

BOARD = {"pynq": "kv260", "xrt": "u280"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from accllm.host.image import read_engine_image

    path = flow_paths(tmp_path_factory)[2]
    img = read_engine_image(SimpleNamespace(path=path))
    assert img.engine is not None and img.engine.channels > 1
    return path, img


class Runs:
    """The kernel model: records each run's (n_tokens, pos)."""

    def __init__(self):
        self.seen = []

    def __call__(self, arrays, scalars):
        self.seen.append((scalars["n_tokens"], scalars["pos"]))


def manifest(tmp_path, path, img, kind, engine_rtl=None):
    """A built manifest entry from the recipe's own manifest_entry for the compiled build (its engine included)."""
    board = get_board(BOARD[kind])
    h = img.header
    entry = manifest_entry(find_hls_top(), board, h["lanes"], h["group"], h["dims"], 1, *format_versions(),
                           engine=ek.engine_of(path), block=h["block"])
    if engine_rtl is not None:
        entry["engine_rtl"] = engine_rtl(entry["engine_rtl"])
    for a in entry["artifacts"].values():
        f = tmp_path / a["path"]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"bits of " + a["path"].encode())
        a["sha256"] = sha256_file(f)
    entry["built"] = True
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"format": "accllm-bitstream-manifest-v1", "bitstreams": [entry]}))
    return m, entry


def board(kind, tmp_path, monkeypatch, path, img, params=None, engine_rtl=None):
    """(device, engine, fake pyxrt or None, manifest entry, manifest path) with the fakes installed."""
    m, entry = manifest(tmp_path, path, img, kind, engine_rtl)
    dev = FakeDevice(Runs(), img.args, protocol="ap_ctrl_hs" if kind == "pynq" else "ap_ctrl_chain")
    params = params or img.engine.params
    if kind == "pynq":
        eng = FakeEngine(dev, params)
        monkeypatch.setattr(FakeOverlay, "sim", dev, raising=False)
        monkeypatch.setattr(FakeOverlay, "engine", eng)
        monkeypatch.setattr(FakeOverlay, "loaded", [])
        monkeypatch.setattr(pynq, "Overlay", FakeOverlay)
        monkeypatch.setattr(pynq, "allocate", lambda shape, dtype="u4", **kw: dev.allocate(shape, dtype))
        return dev, eng, None, entry, m
    top = find_hls_top()
    banks = parse_link_banks(link_cfg(top, get_board("u280")))
    fake = fake_pyxrt(dev, [a.name for a in img.args], banks, top.name, engine_name=ek.KERNEL)
    eng = FakeEngine(dev, params, banks=entry["engine_rtl"]["banks"], bank_of=fake.bank_of)
    monkeypatch.setitem(sys.modules, "pyxrt", fake)
    return dev, eng, fake, entry, m


def open_engine_backend(kind, img, m):
    port = open_kernel(kind, img, manifest=m, board=BOARD[kind])
    return EngineBackend(kind, EngineDriver(port, img, timeout_s=5.0, grace_s=0.05))


@pytest.mark.parametrize("kind", ["pynq", "xrt"])
def test_engine_regions_are_placed_before_the_first_run(kind, compiled, tmp_path, monkeypatch):
    path, img = compiled
    dev, eng, fake, entry, m = board(kind, tmp_path, monkeypatch, path, img)
    rec = entry["engine_rtl"]
    assert rec["kernel"] == (ek.KERNEL if kind == "xrt" else ek.CELL)
    assert {k: rec[k] for k in er.IDENTITY} == er.identity(img.engine.params)
    be = open_engine_backend(kind, img, m)
    assert dev.runs == 0 and dev.errors == []
    # INFO and T were read before anything was allocated
    first = [(op, off, n) for op, off, _, n in eng.log if op == "r"][:2]
    assert first == [("r", er.INFO, 0), ("r", er.T, 0)]
    data = (path / IMAGE_FILE).read_bytes()
    bufs = be.driver.engine_buffers
    assert len(bufs) == img.engine.channels
    for ch, buf in enumerate(bufs):
        assert eng.region(ch) == buf.device_address  # REGION = the channel's buffer address
        o, n = img.engine.offsets[ch], img.engine.sizes[ch]
        assert eng.device_bytes(ch) == data[o:o + n]  # the channel's own region of weights.engine, synced
    assert sum(img.engine.sizes) == len(data) and len(set(img.engine.offsets)) == img.engine.channels
    if fake is not None:  # each channel's bo in the bank link.cfg connects its master to, apart from the kernel's
        cfg = parse_link_banks(link_cfg(find_hls_top(), get_board("u280"), ek.engine_of(path)))
        want = [cfg[ek.master(ch)] for ch in range(img.engine.channels)]
        assert [fake.bank_of[b.device_address] for b in bufs] == want == rec["banks"]
        assert not set(want) & {cfg[a] for a in find_hls_top().m_axi}
    be.forward_top([5, 6, 7], 4)
    be.forward_top([8], 4)
    assert dev.errors == [] and dev.engine.not_ready(dev.runs) == [] and dev.runs == 2
    assert be.driver.kernel.engine is not None and dev.kernel.seen == [(3, 0), (1, 3)]
    if kind == "pynq":  # a bitstream reload clears the engine's registers: recover places the regions again
        be.driver.kernel.reload()
        assert eng.region(0) == 0
        be.driver.recover()
        be.forward_top([9], 4)
        assert dev.errors == [] and eng.region(0) == bufs[0].device_address and dev.kernel.seen[-1] == (1, 0)


def test_the_fake_refuses_a_start_before_the_engine_is_placed(compiled, tmp_path, monkeypatch):
    path, img = compiled
    dev, eng, _, _, m = board("pynq", tmp_path, monkeypatch, path, img)
    port = open_kernel("pynq", img, manifest=m, board="kv260")
    port.engine = None  # a runtime that does not know about the engine
    be = EngineBackend("pynq", EngineDriver(port, img, timeout_s=0.2))
    with pytest.raises(Exception):
        be.forward_top([1], 4)
    assert dev.runs == 0 and any("engine channel 0: REGION is 0x0, no buffer there" in e for e in dev.errors)
    # placed, then one channel's buffer changed on the host without a sync: refused again
    dev2, eng2, _, _, m2 = board("pynq", tmp_path / "b", monkeypatch, path, img)
    be2 = open_engine_backend("pynq", img, m2)
    be2.forward_top([1], 4)
    assert dev2.errors == []
    be2.driver.engine_buffers[1][0] ^= 0xFF
    with pytest.raises(Exception):
        be2.forward_top([2], 4)
    assert any("engine channel 1: its buffer was written by the host but not synced" in e for e in dev2.errors)
    eng2.write(er.CTRL, er.CTRL_START)
    assert any("only REGION is the host's" in e for e in dev2.errors)


@pytest.mark.parametrize("kind", ["pynq", "xrt"])
@pytest.mark.parametrize("field,param", [("channels", "CHANNELS"), ("block", "T"), ("channel_bits", "W")])
def test_an_engine_of_another_build_is_refused_losing_nothing(kind, field, param, compiled, tmp_path, monkeypatch):
    path, img = compiled
    other = dict(img.engine.params, **{param: img.engine.params[param] * 2})
    dev, eng, _, _, m = board(kind, tmp_path, monkeypatch, path, img, params=other)
    with pytest.raises(EngineMismatch) as e:
        open_engine_backend(kind, img, m)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("wrong bitstream for this build: its engine reports ")
    assert f"{field} {other[param]}" in msg and f"needs {field} {img.engine.params[param]}" in msg
    assert dev.host == {} and dev.runs == 0 and not [x for x in eng.log if x[0] == "w"]


@pytest.mark.parametrize("kind", ["pynq", "xrt"])
def test_the_manifest_engine_must_fit_the_build(kind, compiled, tmp_path, monkeypatch):
    path, img = compiled
    bad = (lambda r: dict(r, block=r["block"] + 1))
    dev, _, fake, entry, m = board(kind, tmp_path, monkeypatch, path, img, engine_rtl=bad)
    with pytest.raises(ValueError, match="no built bitstream"):  # not chosen automatically
        open_kernel(kind, img, manifest=m, board=BOARD[kind])
    with pytest.raises(BitstreamMismatch, match=r"engine: the build's weights.engine needs block \d+, the "
                                                r"bitstream's engine has block \d+"):
        open_kernel(kind, img, bitstream=entry["name"], manifest=m, board=BOARD[kind])
    header = {k: v for k, v in img.header.items() if k != "engine_rtl"}
    no_engine = SimpleNamespace(**{**img.__dict__, "header": header})
    with pytest.raises(BitstreamMismatch, match="the build has no engine image"):
        open_kernel(kind, no_engine, bitstream=entry["name"], manifest=m, board=BOARD[kind])
    assert dev.host == {} and (fake is None or fake.loaded == [])


def test_xrt_without_xrt_ip_says_so_before_loading(compiled, tmp_path, monkeypatch):
    path, img = compiled
    _, _, fake, _, m = board("xrt", tmp_path, monkeypatch, path, img)
    monkeypatch.delattr(fake, "ip")
    with pytest.raises(ImportError, match=r"needs xrt::ip, which this pyxrt does not bind"):
        open_kernel("xrt", img, manifest=m, board="u280")
    assert fake.loaded == []


def test_engine_banks_apart_where_the_board_has_room():
    assert ek.engine_banks(4, 7, 32) == [7, 8, 9, 10]
    assert ek.engine_banks(25, 7, 32) == list(range(7, 32))
    assert ek.engine_banks(32, 7, 32) == list(range(32))  # U280's 32-channel engine: HBM[0..6] shared
    with pytest.raises(ValueError, match="33 channels, the board 32 memory banks"):
        ek.engine_banks(33, 7, 32)


def test_info_value_round_trips():
    p = {"CHANNELS": 32, "CORES": 8, "LANES": 16, "WBITS": 4, "W": 512, "T": 64}
    assert er.info_value(p) == 32 | 8 << 8 | 16 << 16 | 4 << 24 | 2 << 28
    assert er.read_identity(er.info_value(p), 64) == er.identity(p)
    assert np.all([er.read_identity(er.info_value(dict(p, W=w)), 1)["channel_bits"] == w for w in (128, 256, 512)])
