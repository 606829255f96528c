"""The engine driver (the code shared by the board and simulation backends) on a register-level kernel port over
the protocol-enforcing device fake of ``board_fakes`` (ap_start/ap_done/ap_idle, ap_continue under ap_ctrl_chain,
device memory apart from host memory).

The kernel model here checks what the driver uploaded, records the scalars of each run, writes a KV slot marker
and one-hot logits. The driver above it is the real one.
"""
import numpy as np
import pytest
from board_fakes import AP_CONTINUE, AP_START, CTRL, FakeDevice

from accllm.host.control import RegisterKernel
from accllm.host.engine import DeviceNotIdle, DeviceTimeout, EngineBackend, EngineDriver
from accllm.host.image import EngineImage, vitis_arg_offsets
from accllm.host.mmio import AP_DONE, SimIO
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
    return EngineImage(header={"program_format": 1, "blob_format": 1, "lanes": 16, "group": 32, "block": 1,
                               "dims": DIMS}, args=args,
                       buffers={"program": PROGRAM, "weights": WEIGHTS, "kv": 0, "logits": 4 * VOCAB},
                       kv_arg="kv", logits_arg="logits", vocab=VOCAB, layout=LAYOUT,
                       scalars={"token": "token", "pos": "pos", "slot": "slot", "occupied": "occupied"},
                       constants={"n_layers": 2})


class EchoKernel:
    """Kernel model: next token = token + 1; the KV slot it writes holds the token."""

    def __init__(self):
        self.seen, self.hang = [], False

    def __call__(self, arrays, scalars):
        assert bytes(arrays["program"]) == PROGRAM and bytes(arrays["weights"]) == WEIGHTS
        assert scalars["n_layers"] == 2 and arrays["kv"].nbytes == LAYOUT.nbytes
        tok, pos, slot, occ = (scalars[k] for k in ("token", "pos", "slot", "occupied"))
        self.seen.append((tok, pos, slot, occ))
        if self.hang:
            return "hang"
        arrays["kv"][slot] = tok
        logits = arrays["logits"].view(np.float32)
        logits[:] = 0
        logits[(tok + 1) % VOCAB] = 1.0


def backend(protocol="ap_ctrl_hs", kernel_protocol=None, timeout_s=1.0):
    img, k = image(), EchoKernel()
    dev = FakeDevice(k, img.args, protocol=protocol)
    be = EngineBackend("pynq", EngineDriver(RegisterKernel(dev, img.args, kernel_protocol or protocol), img,
                                            timeout_s=timeout_s, grace_s=0.05))
    return be, dev, k


@pytest.mark.parametrize("protocol", ["ap_ctrl_hs", "ap_ctrl_chain"])
def test_driver_uploads_buffers_and_runs_the_lambda_slot_sequence(protocol):
    be, dev, k = backend(protocol)
    ids = list(range(3, 15))  # 12 tokens through 2 sinks + 5 ring slots
    logits = be.forward(ids)
    assert dev.errors == []
    assert int(np.argmax(logits)) == 15 and dev.runs == 12
    assert [s[0] for s in k.seen] == ids
    assert [s[1] for s in k.seen] == list(range(12))
    assert [s[2] for s in k.seen] == [LAYOUT.slot_of(p) for p in range(12)] == [0, 1, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6]
    assert [s[3] for s in k.seen] == [min(p + 1, 7) for p in range(12)]
    # The device cache holds exactly the tokens Λ keeps: the sinks and the last five.
    held = [int(b) for b in be.driver.kv.image()[:7]]
    pos = be.driver.kv.slot_positions()
    assert [ids[p] for p in pos] == held == [3, 4, 10, 11, 12, 13, 14]
    be.reset()
    be.forward([7])
    assert k.seen[-1] == (7, 0, 0, 1) and dev.errors == []
    assert be.resident_bytes() == LAYOUT.nbytes


def test_ap_continue_is_written_after_each_done_only_under_ap_ctrl_chain():
    for protocol in ("ap_ctrl_hs", "ap_ctrl_chain"):
        be, dev, _ = backend(protocol)
        ctrl, write = [], dev.write

        def logged(offset, value, write=write, ctrl=ctrl):
            if offset == CTRL:
                ctrl.append(value)
            write(offset, value)

        dev.write = logged
        be.forward([1, 2, 3])
        assert ctrl == ([AP_START] * 3 if protocol == "ap_ctrl_hs" else [AP_START, AP_CONTINUE] * 3)
        assert dev.errors == []


def test_the_fake_catches_a_missing_ap_continue_and_a_missing_sync():
    """The fake is strict: driving an ap_ctrl_chain kernel as ap_ctrl_hs leaves it waiting for ap_continue, and
    a buffer whose sync is skipped is reported; the driver refuses to start a kernel that is not idle."""
    be, dev, _ = backend("ap_ctrl_chain", kernel_protocol="ap_ctrl_hs")
    be.forward([1])
    with pytest.raises(DeviceNotIdle, match="busy"):
        be.forward([2])
    be2, dev2, _ = backend()
    be2.driver.buffers["logits"].sync_from_device = lambda: None
    be2.forward([1])
    be2.forward([2])
    assert any("never synced from the device" in e for e in dev2.errors)
    be3, dev3, _ = backend()
    be3.driver.buffers["weights"][0] ^= 1  # a host write the driver never synced
    be3.forward([1])
    assert any("weights was written by the host but not synced" in e for e in dev3.errors)


@pytest.mark.parametrize("protocol", ["ap_ctrl_hs", "ap_ctrl_chain"])
def test_timeout_then_reset_reloads_checks_idle_and_restarts_the_stream(protocol):
    be, dev, k = backend(protocol, timeout_s=0.1)
    be.forward([1, 2])
    k.hang = True
    with pytest.raises(DeviceTimeout, match="ap_done within 0.1 s"):
        be.forward([3])
    with pytest.raises(DeviceNotIdle, match="timed out"):  # never started again on a hung kernel
        be.forward([4])
    k.hang = False
    be.reset()  # what the server calls after a timeout: the kernel is reloaded, bound again, idle
    assert dev.reloads == 1 and dev.state == "idle"
    logits = be.forward([5, 6])
    assert int(np.argmax(logits)) == 7 and k.seen[-2:] == [(5, 0, 0, 1), (6, 1, 1, 2)]
    assert dev.errors == []


def test_a_late_done_is_taken_without_a_reload():
    be, dev, k = backend("ap_ctrl_chain", timeout_s=0.1)
    k.hang = True
    with pytest.raises(DeviceTimeout):
        be.forward([3])
    dev.finish_hung()  # the run completes after the timeout
    k.hang = False
    be.recover()
    assert dev.reloads == 0
    assert int(np.argmax(be.forward([9]))) == 10 and k.seen[-1] == (9, 0, 0, 1) and dev.errors == []


def test_a_kernel_still_busy_after_reload_is_an_error():
    be, dev, k = backend(timeout_s=0.1)
    k.hang = True
    with pytest.raises(DeviceTimeout):
        be.forward([3])
    dev.reload = lambda: None  # a reload that does not reset the kernel
    with pytest.raises(DeviceNotIdle, match="still busy after a reload"):
        be.reset()


def test_sim_io_ap_done_is_clear_on_read_and_bad_tokens_are_refused():
    img = image()

    def run(io):
        io.buffer_at(io.reg64(img.args[3].offset)).view(np.float32)[0] = 1.0
        io.finish()

    io = SimIO(run)
    drv = EngineDriver(RegisterKernel(io, img.args), img, timeout_s=0.5)
    drv.load()
    drv.step(1)
    assert not io.read(CTRL) & AP_DONE  # the driver's poll consumed it
    with pytest.raises(ValueError, match="outside the vocabulary"):
        drv.step(VOCAB)


def test_an_image_naming_unknown_kernel_arguments_is_refused():
    img = image()
    img.scalars["tokn"] = "token"
    with pytest.raises(ValueError, match="no argument"):
        EngineDriver(RegisterKernel(SimIO(), img.args), img)
    img = image()
    img.max_tokens = 4  # several tokens per run need a tokens buffer
    with pytest.raises(ValueError, match="without a tokens buffer takes one token per run"):
        EngineDriver(RegisterKernel(SimIO(), img.args), img)
    img.tokens_arg, img.max_tokens = "logits", VOCAB + 1  # a buffer of 4 * VOCAB bytes
    with pytest.raises(ValueError, match=f"must hold {VOCAB + 1} uint32 ids"):
        EngineDriver(RegisterKernel(SimIO(), img.args), img)
