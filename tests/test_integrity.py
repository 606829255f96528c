"""Every file a backend loads is covered by its build's files.sha256: a flipped byte, a truncation or a deletion
of any of them is refused by `accllm run` with one line naming the file (the corruption matrix), and a truncated
cached C-simulation library is rebuilt instead of crashing the process."""
import shutil

import pytest

from flow_fixtures import flow_paths

# file in the build (as `accllm compile` + checkpoint/ lays it out) -> backend that loads it
COMPILED = ["program.bin", "weights.blob", "hls/accllm_kernel.h", "hls/parameters.h", "hls/accllm_top.cpp",
            "hls/csim_api.cpp", "hls/accllm_core_hls_bb.h", "hls/accllm_core_hls_bb.cpp"]
CHECKPOINT = ["checkpoint/compressed.safetensors", "checkpoint/compression.json", "checkpoint/config.json",
              "checkpoint/tokenizer.json"]
CASES = [(f, "csim") for f in COMPILED] + [(f, "golden") for f in CHECKPOINT] + \
        [("checkpoint/compressed.safetensors", "fakequant")]


@pytest.fixture(scope="session")
def intact(tmp_path_factory):
    """A build as `accllm compile` leaves it (program, blob, HLS project, files.sha256) with the compressed
    checkpoint beside it, copied (not linked) so each case may damage its own copy."""
    ckpt, _, compiled = flow_paths(tmp_path_factory)
    d = tmp_path_factory.mktemp("intact") / "build"
    shutil.copytree(compiled, d)
    shutil.copytree(ckpt, d / "checkpoint")
    return d


def _flip(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {"flip": _flip, "truncate": _truncate, "delete": lambda p: p.unlink()}


def _run(d, backend, capsys):
    from accllm.host.cli import main

    rc = main(["run", str(d), "--backend", backend, "--prompt", "def f(x):", "--max-tokens", "2"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("name, backend", CASES)
def test_damaged_file_is_refused_naming_it(intact, tmp_path, capsys, name, backend, how):
    d = tmp_path / "build"
    shutil.copytree(intact, d)
    DAMAGE[how](d / name)
    rc, err = _run(d, backend, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert name.rsplit("/", 1)[-1] in lines[0], lines[0]


def test_edited_program_metadata_is_refused(intact, tmp_path, capsys):
    """The program container's payload checksum leaves its JSON metadata out: the manifest covers it."""
    d = tmp_path / "build"
    shutil.copytree(intact, d)
    data = (d / "program.bin").read_bytes()
    i = data.index(b'"kv_bytes": ') + len(b'"kv_bytes": ')
    (d / "program.bin").write_bytes(data[:i] + (b"9" if data[i:i + 1] != b"9" else b"8") + data[i + 1:])
    rc, err = _run(d, "csim", capsys)
    assert rc == 2 and "program.bin: sha256 differs" in err, err


def test_one_character_in_parameters_h_is_refused(intact, tmp_path, capsys):
    d = tmp_path / "build"
    shutil.copytree(intact, d)
    p = d / "hls" / "parameters.h"
    p.write_text(p.read_text().replace("hidden = 256", "hidden = 255", 1))
    rc, err = _run(d, "csim", capsys)
    assert rc == 2 and "parameters.h: sha256 differs" in err, err


def test_corrupt_manifest_is_refused(intact, tmp_path, capsys):
    d = tmp_path / "build"
    shutil.copytree(intact, d)
    (d / "files.sha256").write_text("garbage\n")
    rc, err = _run(d, "csim", capsys)
    assert rc == 2 and "files.sha256: line 1" in err, err


def test_intact_build_runs_from_the_compile_output(intact, tmp_path, capsys):
    """The control of the matrix: the same copy undamaged runs (`accllm run BUILD` on a compile output)."""
    d = tmp_path / "build"
    shutil.copytree(intact, d)
    rc, err = _run(d, "golden", capsys)
    assert rc == 0, err


def test_single_purpose_commands_carry_the_checkpoint(tmp_path, capsys):
    """README: `accllm export CKPT -o DIR`, `accllm compile DIR -o BUILD`, then `accllm run BUILD`."""
    from accllm.host.cli import main

    from flow_fixtures import BUNDLED_COMPRESSED

    assert main(["export", str(BUNDLED_COMPRESSED), "-o", str(tmp_path / "onnx")]) == 0
    assert main(["compile", str(tmp_path / "onnx"), "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    rc, err = _run(tmp_path / "b", "golden", capsys)
    assert rc == 0, err


def test_truncated_cached_library_is_rebuilt(intact, tmp_path, monkeypatch):
    from accllm.hls import csim

    lib = csim.build_library(intact / "hls")  # built or taken from the user's cache
    monkeypatch.setenv("ACCLLM_CACHE", str(tmp_path / "cache"))
    mine = csim.cache_dir() / lib.name
    mine.parent.mkdir(parents=True)
    shutil.copyfile(lib, mine)
    shutil.copyfile(lib.with_name(lib.name + ".sha256"), mine.with_name(mine.name + ".sha256"))
    assert csim.cached_library_ok(mine)
    _truncate(mine)
    assert not csim.cached_library_ok(mine)
    assert csim.build_library(intact / "hls") == mine and csim.cached_library_ok(mine)
    sim = csim.CSim(intact)  # loads the rebuilt library: no bus error
    assert sim.step(1).shape == (sim.vocab,)


def test_garbage_state_json_names_the_file(tmp_path, capsys):
    from accllm.host.cli import main
    from accllm.host.flow_config import DEFAULT_FLOW

    out = tmp_path / "b"
    out.mkdir()
    for garbage in (b"\x00\xff garbage", b"[1, 2]", b'{"steps": 3}'):
        (out / "state.json").write_bytes(garbage)
        assert main(["build", str(DEFAULT_FLOW), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out / 'state.json'}: not a build state file" in err and len(err.strip().splitlines()) == 1, err


def test_corrupt_tokenizer_outside_a_checkpoint_is_one_line(tmp_path):
    from accllm.host.tokenizer import Tokenizer

    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer file"):
        Tokenizer(tmp_path)


def test_manifest_covers_folders_and_follows_links(tmp_path):
    from accllm.quant.integrity import verify, write_manifest

    d = tmp_path / "build"
    (d / "hls").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"a")
    (d / "hls" / "x.h").write_text("x")
    (d / "hls" / "y.h").write_text("y")
    write_manifest(d)
    assert (d / "files.sha256").read_text().splitlines()[0].endswith("  a.bin")
    verify(d, ["a.bin", "hls"])
    links = tmp_path / "links"  # a folder of links into the build is checked against the build's manifest
    links.mkdir()
    (links / "hls").symlink_to(d / "hls")
    verify(links, ["hls/x.h"])
    (d / "hls" / "y.h").unlink()
    with pytest.raises(FileNotFoundError, match="y.h is missing"):
        verify(d, ["hls"])
    (d / "hls" / "z.h").write_text("new")
    with pytest.raises(ValueError, match="z.h: not listed in"):
        verify(links, ["hls/z.h"])
    (tmp_path / "loose.bin").write_bytes(b"?")
    with pytest.raises(ValueError, match="no files.sha256 covers it"):
        verify(tmp_path, ["loose.bin"])
