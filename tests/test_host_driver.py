"""The engine driver (the code shared by the pynq and csim backends) over an in-process register file.

The kernel here is a stand-in at the lowest layer: on ap_start it reads the argument registers the way the
HLS kernel's s_axilite map presents them, checks what the driver uploaded, and writes logits and a KV
slot marker. The driver above it is the real one.
"""
import numpy as np
import pytest

from accllm.host.engine import DeviceTimeout, EngineBackend, EngineDriver
from accllm.host.image import EngineImage, vitis_arg_offsets
from accllm.host.mmio import AP_DONE, AP_START, CTRL, SimIO
from accllm.sim.kv_layout import KVLayout

VOCAB = 50
LAYOUT = KVLayout(layers=2, kv_heads=2, head_dim=8, sinks=2, window=5)
PROGRAM = bytes(range(256)) * 3
WEIGHTS = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))


DIMS = {"vocab": 8, "hidden": 4, "layers": 1}


def image():
    args = vitis_arg_offsets([("program", True), ("weights", True), ("kv", True), ("logits", True),
                              ("n_layers", False), ("token", False), ("pos", False), ("slot", False),
                              ("occupied", False)])
    return EngineImage(header={"program_format": 1, "blob_format": 1, "lanes": 16, "group": 32, "dims": DIMS}, args=args,
                       buffers={"program": PROGRAM, "weights": WEIGHTS, "kv": 0, "logits": 4 * VOCAB},
                       kv_arg="kv", logits_arg="logits", vocab=VOCAB, layout=LAYOUT,
                       scalars={"token": "token", "pos": "pos", "slot": "slot", "occupied": "occupied"},
                       constants={"n_layers": 2})


class FakeKernel:
    def __init__(self, img, finish=True):
        self.off = {a.name: a.offset for a in img.args}
        self.seen, self.finish = [], finish

    def __call__(self, io: SimIO):
        r = self.off
        prog = io.buffer_at(io.reg64(r["program"]))
        assert bytes(prog) == PROGRAM and bytes(io.buffer_at(io.reg64(r["weights"]))) == WEIGHTS
        assert io.regs[r["n_layers"]] == 2
        kv = io.buffer_at(io.reg64(r["kv"]))
        assert kv.nbytes == LAYOUT.nbytes
        tok, pos, slot, occ = (io.regs[r[k]] for k in ("token", "pos", "slot", "occupied"))
        self.seen.append((tok, pos, slot, occ))
        kv[slot] = tok  # a marker: which token last wrote this slot
        logits = io.buffer_at(io.reg64(r["logits"])).view(np.float32)
        logits[:] = 0
        logits[(tok + 1) % VOCAB] = 1.0
        if self.finish:
            io.finish()


def test_driver_uploads_buffers_and_runs_the_lambda_slot_sequence():
    img = image()
    k = FakeKernel(img)
    io = SimIO(k)
    be = EngineBackend("csim", EngineDriver(io, img, timeout_s=1.0))
    # Load wrote each buffer's 64-bit device address into its pointer argument (low word, then high word).
    for a in img.args:
        if a.pointer:
            addr = io.reg64(a.offset)
            assert addr and io.buffer_at(addr) is be.driver.buffers[a.name]
    ids = list(range(3, 15))  # 12 tokens through 2 sinks + 5 ring slots
    logits = be.forward(ids)
    assert int(np.argmax(logits)) == 15
    assert [s[0] for s in k.seen] == ids
    assert [s[1] for s in k.seen] == list(range(12))
    assert [s[2] for s in k.seen] == [LAYOUT.slot_of(p) for p in range(12)] == [0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6]
    assert [s[3] for s in k.seen] == [min(p + 1, 7) for p in range(12)]
    # The device cache holds exactly the tokens Λ keeps: the sinks and the last five.
    held = [int(b) for b in be.driver.kv.image()[:7]]
    pos = be.driver.kv.slot_positions()
    assert [ids[p] for p in pos] == held == [3, 4, 10, 11, 12, 13, 14]
    # Every run is: scalars, then ap_start; the control register is written with ap_start only.
    ctrl_writes = [v for o, v in io.writes if o == CTRL]
    assert ctrl_writes == [AP_START] * 12
    be.reset()
    be.forward([7])
    assert k.seen[-1] == (7, 0, 0, 1)
    assert be.resident_bytes() == LAYOUT.nbytes


def test_a_device_that_never_signals_done_times_out():
    img = image()
    be = EngineBackend("csim", EngineDriver(SimIO(FakeKernel(img, finish=False)), img, timeout_s=0.2))
    with pytest.raises(DeviceTimeout, match="ap_done within 0.2 s"):
        be.forward([1])


def test_ap_done_is_clear_on_read_and_bad_tokens_are_refused():
    img = image()
    io = SimIO(FakeKernel(img))
    drv = EngineDriver(io, img, timeout_s=0.5)
    drv.load()
    drv.step(1)
    assert not io.read(CTRL) & AP_DONE  # the driver's poll consumed it
    with pytest.raises(ValueError, match="outside the vocabulary"):
        drv.step(VOCAB)


def test_an_image_naming_unknown_kernel_arguments_is_refused():
    img = image()
    img.scalars["tokn"] = "token"
    with pytest.raises(ValueError, match="no argument"):
        EngineDriver(SimIO(), img)
