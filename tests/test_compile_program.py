import shutil

import numpy as np
import onnx
import pytest

from flow_fixtures import flow_paths, one_thread


_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="session")
def flow(tmp_path_factory):
    return flow_paths(tmp_path_factory)


def test_program_and_blob_round_trip(flow):
    from accllm.hls import blob, container, program
    from accllm.hls.compiler import weights_from_export

    _, onnx_dir, build = flow
    meta, instrs, _ = program.read_program(build / "program.bin")
    bmeta, payload = blob.read_blob(build / "weights.blob")
    program.check_pair(meta, container.sha256(payload))
    d = meta["dims"]
    assert sum(i.op == program.OP_LINEAR for i in instrs) == 7 * d["layers"]
    assert sum(i.op == program.OP_ATTENTION for i in instrs) == d["layers"]
    # A linear's weight stream decodes back (accllm.sim.weight_stream) to the codes read from the graph.
    from accllm.sim import weight_stream as ws
    from accllm.sim.golden_core import decode_2to4

    w = weights_from_export(onnx_dir, progress=False)
    lin = w.linears[2]["down_proj"]
    data = blob.section(bmeta, payload, "layers.2.down_proj.stream").tobytes()
    n, k = lin.codes.shape
    f = ws.unpack(data, ws.MODE_SPARSE, blob.kernel_stream_format(w.dims.group, meta["engine"]["lanes"]), n, k)
    assert np.array_equal(decode_2to4(f["vals"], f["pos"], f["zeros"], w.dims.group).numpy(), lin.codes.numpy())
    assert np.array_equal(f["scales"], lin.scales.numpy())  # fp16 scales: the stream holds the golden model's
    assert not any(name.endswith(".scales") for name in bmeta["sections"])  # and no other copy


def test_corrupt_or_mismatched_files_are_refused(flow, tmp_path):
    from accllm.hls import blob, program

    _, _, build = flow
    for name, reader in (("program.bin", program.read_program), ("weights.blob", blob.read_blob)):
        data = bytearray((build / name).read_bytes())
        data[-3] ^= 0xFF
        (tmp_path / name).write_bytes(bytes(data))
        with pytest.raises(ValueError, match="checksum"):
            reader(tmp_path / name)
        (tmp_path / name).write_bytes(b"NOTMAGIC" + bytes(data[8:]))
        with pytest.raises(ValueError, match="not an accllm"):
            reader(tmp_path / name)
    with pytest.raises(ValueError, match="different weight blob"):
        program.check_pair(program.read_program(build / "program.bin")[0], "0" * 64)


def test_unsupported_op_is_named(flow, tmp_path):
    from accllm.hls.compiler import compile_export

    _, onnx_dir, _ = flow
    bad = tmp_path / "onnx"
    shutil.copytree(onnx_dir, bad)
    g = onnx.load(str(bad / "layer01.onnx"))
    out = g.graph.output[0].name
    g.graph.node.append(onnx.helper.make_node("Erf", [out], ["erf_out"], name="my_erf"))
    g.graph.output[0].name = "erf_out"
    onnx.save(g, str(bad / "layer01.onnx"))
    with pytest.raises(ValueError, match="my_erf.*Erf"):
        compile_export(bad, tmp_path / "build", progress=False)


def test_compile_cli_writes_build(flow, tmp_path, capsys):
    from accllm.host.cli import main

    _, onnx_dir, _ = flow
    assert main(["compile", str(onnx_dir / "layer00.onnx"), "-o", str(tmp_path / "b"), "--target", "zcu104"]) == 0
    assert "wrote" in capsys.readouterr().out
    params = (tmp_path / "b" / "hls" / "parameters.h").read_text()
    assert "static const unsigned hidden = 256;" in params and "xczu7ev" in (tmp_path / "b" / "hls" / "hls_target.tcl").read_text()
    assert main(["compile", str(onnx_dir), "-o", str(tmp_path / "c"), "--target", "nosuchboard"]) == 2
