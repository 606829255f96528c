"""Opening a board: choose the bitstream from the manifest, verify it, then load it and open the kernel port —
PYNQ (``pynq.Overlay`` and its register map) on Zynq boards, XRT (``pyxrt``) on Alveo."""
from __future__ import annotations

from pathlib import Path


# The bitstream flow each board backend loads: PYNQ opens Vivado .bit/.hwh overlays (pynq 4 has no Alveo
# support), XRT opens Vitis .xclbin files.
BACKEND_FLOW = {"pynq": "vivado", "xrt": "vitis"}


def choose_bitstream(manifest, image, name: str | None = None, board: str | None = None, flow: str | None = None):
    """The manifest entry to load: ``name`` if given, else the one built entry (for ``board``, of ``flow``)
    whose engine parameters and formats match the program."""
    from accllm.bitstreams.manifest import program_problems

    if name is not None:
        return manifest.entry(name)
    h = image.header

    def fits(e):
        return (e.built and (board is None or e.board.lower() == board.lower()) and (flow is None or e.flow == flow)
                and not program_problems(e, h))

    matches = [e for e in manifest.bitstreams if fits(e)]
    if len(matches) != 1:
        listed = ", ".join(f"{e.name} ({e.board}, built={e.built})" for e in manifest.bitstreams) or "none"
        raise ValueError(f"{'no' if not matches else 'more than one'} built bitstream in the manifest matches this "
                         f"program (lanes={_get(h, 'lanes')}, group={_get(h, 'group')}); name one with --bitstream. "
                         f"Listed: {listed}")
    return matches[0]


def _get(h, key):
    return h.get(key) if isinstance(h, dict) else getattr(h, key, None)


def open_kernel(backend: str, image, bitstream: str | None = None, manifest: str | Path | None = None,
                board: str | None = None):
    """The kernel port of a verified bitstream (``verify_bitstream`` refuses one whose checksum, formats or
    engine parameters differ from the manifest and the program): ``pynq`` -> a register-level
    :class:`~accllm.host.control.RegisterKernel` on :class:`~accllm.host.mmio.PynqIO`, ``xrt`` ->
    :class:`~accllm.host.xrt.XrtKernel`."""
    from accllm.bitstreams.manifest import DEFAULT_MANIFEST, load_manifest, verify_bitstream

    from .control import FLOW_PROTOCOL, RegisterKernel

    if backend not in BACKEND_FLOW:
        raise ValueError(f"unknown board backend {backend!r}; choose one of {', '.join(BACKEND_FLOW)}")
    mpath = Path(manifest) if manifest else DEFAULT_MANIFEST
    m = load_manifest(mpath)
    entry = choose_bitstream(m, image, bitstream, board, BACKEND_FLOW[backend])
    if entry.flow != BACKEND_FLOW[backend]:
        other = next(b for b, f in BACKEND_FLOW.items() if f == entry.flow)
        raise ValueError(f"bitstream {entry.name!r} ({entry.board}) is a {entry.flow} build: run it with "
                         f"--backend {other}, not {backend}")
    main = entry.artifacts["bit" if entry.flow == "vivado" else "xclbin"]
    path = mpath.parent / main.path
    verify_bitstream(entry, path, image.header, board=board)
    if backend == "xrt":
        from .xrt import XrtKernel

        return XrtKernel(str(path), entry.kernel, [a.name for a in image.args], engine=entry.engine_rtl)
    from .mmio import PynqEngine, PynqIO

    io = PynqIO(path, entry.kernel)
    check_register_map(io.ip, image.args)
    port = RegisterKernel(io, image.args, protocol=FLOW_PROTOCOL[entry.flow], poll_s=1e-4)
    if entry.engine_rtl is not None:  # the driver places the engine's regions before the first run
        port.engine = PynqEngine(io, entry.engine_rtl.kernel)
    return port


def check_register_map(ip, args) -> None:
    """Compare the driver's argument offsets with the overlay's register map (read by pynq from the .hwh).
    Vitis names a 64-bit pointer's two words ``<name>_1`` / ``<name>_2``."""
    try:
        regs = ip.register_map._instances
    except Exception:  # no register map (no .hwh): the Vitis offsets are all there is
        return
    problems = []
    for a in args:
        reg = regs.get(a.name) or regs.get(f"{a.name}_1")
        if reg is None:
            problems.append(f"{a.name}: not in the overlay's register map")
        elif int(reg.address) != a.offset:
            problems.append(f"{a.name}: at {int(reg.address):#x} in the overlay, the driver expects {a.offset:#x}")
    if problems:
        raise ValueError("the overlay's kernel does not have the register map this program drives:\n  "
                         + "\n  ".join(problems))
