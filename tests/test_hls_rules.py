"""Static checks of the HLS control kernel (hls/templates) against the Vitis HLS rules of issue #13: each test
fails, naming the file and line, when a template breaks its rule."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from accllm.hls.project import BLACKBOX_H, TEMPLATES

# What Vitis HLS synthesises: the top and the headers it includes (the core's C model and the C-simulation API
# are replaced by the RTL blackbox / not compiled by HLS).
SYNTH = ("accllm_top.cpp", "accllm_kernel.h", "accllm_mem.h", BLACKBOX_H)


def strip(text: str) -> str:
    """Comments and string literals blanked (line numbers kept)."""
    text = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group()), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def sources(names=None) -> dict[str, str]:
    files = sorted(TEMPLATES.glob("*.h")) + sorted(TEMPLATES.glob("*.cpp"))
    return {f.name: strip(f.read_text()) for f in files if names is None or f.name in names}


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def small_dims():
    from accllm.sim.dims import Dims

    return Dims(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, group=32,
                eps=1e-5, sinks=4, window=28, sink_rotation=True, sparse=True)


def generated_parameters() -> str:
    from accllm.hls.compiler import trace_offsets
    from accllm.hls.project import parameters_h
    from accllm.sim.dims import Dims

    d = small_dims()
    return strip(parameters_h(d, 16, trace_offsets(d), block=4, sizes={"program": 4096, "blob": 1 << 16}))


# ---------------------------------------------------------------- no double, no unbounded loops

def test_no_double():
    bad = [f"{name}:{line_of(t, m.start())}" for name, t in sources().items() for m in re.finditer(r"\bdouble\b", t)]
    bad += [f"parameters.h:{line_of(t, m.start())}" for t in [generated_parameters()]
            for m in re.finditer(r"\bdouble\b", t)]
    assert not bad, f"double in the HLS kernel (float32 / fixed point only): {', '.join(bad)}"


def test_no_while_or_do_loops():
    bad = [f"{name}:{line_of(t, m.start())}" for name, t in sources().items()
           for m in re.finditer(r"\bwhile\s*\(|\bdo\s*\{", t)]
    assert not bad, f"while / do loop (unbounded for HLS) at {', '.join(bad)}"


# ---------------------------------------------------------------- trip counts

_CONST_WORD = re.compile(r"^(?:[A-Z][A-Z0-9_]*|\d+[uUlL]*|CFG::\w+|engine_cfg::\w+|sizeof|true|false)$")


def _function_start(text: str, pos: int) -> int:
    """Start of the top-level declaration that contains ``pos`` (a line starting in column 0 with a word)."""
    starts = [m.start() for m in re.finditer(r"^(?:template|inline|static|extern|void|[A-Za-z_]\w*\s+[\w:<>*&]+\s*\()",
                                             text[:pos], re.M)]
    return starts[-1] if starts else 0


def _constants(scope: str) -> set[str]:
    """Names declared ``const``/``constexpr`` in ``scope`` from constant expressions (in order of appearance)."""
    known: set[str] = set()
    for m in re.finditer(r"\b(?:static\s+)?(?:const|constexpr)\s+(?:unsigned|int|size_t|bool|uint32_t|long)\s+([^;]+);",
                         scope):
        for decl in _split_top(m.group(1)):
            dm = re.match(r"\s*(\w+)\s*=\s*(.+)$", decl, re.S)
            if dm and is_constant(dm.group(2), known):
                known.add(dm.group(1))
    return known


def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def is_constant(expr: str, known: set[str]) -> bool:
    """An expression of literals, macros / upper-case constants, CFG members, constexpr calls ``f<CFG>()`` and
    names in ``known``."""
    expr = re.sub(r"\b\w+<CFG>\(\)", "0", expr)
    for word in re.findall(r"[A-Za-z_][\w:]*|\d+[uUlL]*", expr):
        if not (_CONST_WORD.match(word) or word in known or word in ("unsigned", "int", "long")):
            return False
    return True


def for_loops(text: str):
    """(position, init, condition, body text up to the first nested loop or the body's end) of every for loop."""
    for m in re.finditer(r"\bfor\s*\(", text):
        i, depth = m.end(), 1
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        header = text[m.end():i - 1]
        parts = header.split(";")
        if len(parts) != 3:
            continue
        rest = text[i:].lstrip()
        if rest.startswith("{"):
            j, depth = 1, 1
            while depth and j < len(rest):
                depth += {"{": 1, "}": -1}.get(rest[j], 0)
                j += 1
            body = rest[:j]
        else:
            body = rest[:rest.find(";") + 1]
        nested = re.search(r"\bfor\s*\(", body)
        yield m.start(), parts[0], parts[1], body[:nested.start()] if nested else body


def synthesised(text: str) -> str:
    """``text`` without the code Vitis HLS never sees: C-simulation-only branches (``#ifndef __SYNTHESIS__``),
    blanked line for line. Both sides of ``#ifdef ACCLLM_ENGINE_STREAM`` are synthesised (a bitstream with the
    engine RTL, and one without), so both are checked."""
    out, skip, stack = [], False, []
    for line in text.split("\n"):
        s = line.strip()
        if re.match(r"#\s*if(n?def)?\b", s):
            cosim = bool(re.match(r"#\s*ifndef\s+__SYNTHESIS__\b", s))
            stack.append((cosim, skip))
            skip = skip or cosim
        elif re.match(r"#\s*else\b", s) and stack:
            cosim, outer = stack[-1]
            if cosim:
                skip = outer
        elif re.match(r"#\s*endif\b", s) and stack:
            skip = stack.pop()[1]
        out.append("" if skip else line)
    return "\n".join(out)


def test_every_runtime_bound_loop_has_a_trip_count():
    bad = []
    for name, text in ((n, synthesised(t)) for n, t in sources(SYNTH).items()):
        for pos, init, cond, body in for_loops(text):
            known = _constants(text[_function_start(text, pos):pos])
            cm = re.match(r"\s*\w+\s*(?:<=|>=|<|>|!=)\s*(.+)$", cond.strip(), re.S)
            im = re.match(r"[^=]*=\s*(.+)$", init.strip(), re.S)
            bound_const = cm is not None and is_constant(cm.group(1), known)
            init_const = im is None or is_constant(im.group(1), known)
            if not (bound_const and init_const) and "LOOP_TRIPCOUNT" not in body:
                bad.append(f"{name}:{line_of(text, pos)} for ({init.strip()}; {cond.strip()}; ...)")
    assert not bad, "loops with a run-time bound and no LOOP_TRIPCOUNT:\n  " + "\n  ".join(bad)


def test_the_trip_count_check_catches_a_loop_without_one():
    text = "void f(unsigned n) {\n  for (unsigned i = 0; i < n; i++) { x += i; }\n}\n"
    (pos, init, cond, body), = for_loops(text)
    assert not is_constant(cond.split("<")[1], _constants(text[:pos])) and "LOOP_TRIPCOUNT" not in body
    text = "void f() {\n  const unsigned L = CFG::lanes, per = (L + 1) / 2;\n  for (unsigned i = 0; i < per; i++) x();\n}"
    (pos, init, cond, body), = for_loops(text)
    assert is_constant(cond.split("<")[1], _constants(text[_function_start(text, pos):pos]))


# ---------------------------------------------------------------- m_axi ports, bundles, banks

def top():
    from accllm.bitstreams.build import find_hls_top

    return find_hls_top()


def _typedefs(text: str) -> dict[str, str]:
    return dict((m.group(2), m.group(1)) for m in re.finditer(r"typedef\s+(ap_u?int<[^;]+>)\s+(\w+)\s*;", text))


def test_every_m_axi_port_is_a_wide_word():
    from accllm.hls.project import word_bits
    from accllm.sim.boards import load_boards

    t = top()
    text = strip(t.source.read_text())
    sig = re.search(rf"void\s+{t.name}\s*\(([^)]*)\)", text).group(1)
    types = {re.findall(r"(\w+)\s*$", a.strip())[0]: a.strip() for a in sig.split(",")}
    allsrc = "\n".join(sources(SYNTH).values())
    typedefs = _typedefs(allsrc)
    macros = dict(re.findall(r"#define\s+(\w+)\s+(\d+)", allsrc))
    assert t.m_axi, "the kernel top has no m_axi ports"
    for port in t.m_axi:
        decl = types[port]
        assert "*" in decl, f"m_axi port {port} is not a pointer: {decl}"
        base = re.sub(r"\bconst\b|\*|\b" + port + r"\b|accllm::", "", decl).strip()
        while base in typedefs:
            base = typedefs[base]
        m = re.fullmatch(r"ap_uint<\s*(\w+)\s*>", base)
        assert m, f"m_axi port {port} points at {base!r}, not ap_uint<N> words"
        n = m.group(1)
        width = int(macros.get(n, n))
        assert width >= 256, f"m_axi port {port} is {width} bits wide (< 256)"
    # the width parameters.h sets (the board's memory port) is >= 256 on every board
    for board in load_boards().values():
        assert 256 <= word_bits(board.port_bits) <= 512


def test_every_m_axi_port_has_its_own_bundle_and_depth():
    t = top()
    bundles = list(t.m_axi.values())
    assert len(set(bundles)) == len(bundles), f"m_axi ports share a bundle: {t.m_axi}"
    text = t.source.read_text()
    for port in t.m_axi:
        pragma = re.search(rf"#pragma\s+HLS\s+INTERFACE[^\n]*port\s*=\s*{port}\b[^\n]*", text).group()
        assert re.search(r"depth\s*=\s*\w+", pragma), f"m_axi port {port} has no depth"


def test_depths_cover_the_build():
    from accllm.hls.compiler import trace_offsets
    from accllm.hls.project import memory_depths
    from accllm.sim.dims import Dims

    d = small_dims()
    deps = memory_depths(d, trace_offsets(d), 16, 512, {"program": 32 * 100, "blob": 123457})
    assert deps["BLOB"] * 64 >= 123457 and deps["PROGRAM"] * 64 >= 3200
    assert deps["KV"] * 64 >= d.kv_layout().nbytes and deps["LOGITS"] * 64 >= 4 * d.vocab
    assert set(deps) == {b.split("_", 1)[1].upper() for b in top().m_axi.values()}


def test_link_cfg_maps_each_bundle_to_exactly_one_bank():
    from accllm.bitstreams.build import link_cfg
    from accllm.sim.boards import get_board

    t = top()
    cfg = link_cfg(t, get_board("u280"))
    sp = re.findall(r"^sp=\w+\.(\w+):(\S+)$", cfg, re.M)
    mapped = {}
    for arg, bank in sp:
        assert re.fullmatch(r"HBM\[\d+\]|DDR\[\d+\]", bank), f"{arg} is mapped to {bank}, not one bank"
        assert arg not in mapped, f"{arg} is mapped twice"
        mapped[arg] = bank
    assert set(mapped) == set(t.m_axi), f"link.cfg maps {sorted(mapped)}, the kernel has {sorted(t.m_axi)}"
    by_bundle = {}
    for arg, bundle in t.m_axi.items():
        by_bundle.setdefault(bundle, set()).add(mapped[arg])
    assert all(len(b) == 1 for b in by_bundle.values())
    assert len({next(iter(b)) for b in by_bundle.values()}) == len(by_bundle), "two bundles share a bank"


# ---------------------------------------------------------------- DATAFLOW never under the interpreter's switch

def function_bodies(text: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"\b(\w+)\s*\([^;{}]*\)\s*(?:const\s*)?\{", text):
        name = m.group(1)
        if name in ("for", "if", "switch", "while"):
            continue
        i, depth = m.end(), 1
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.setdefault(name, text[m.end():i])
    return out


def test_no_dataflow_region_is_called_from_the_switch():
    text = "\n".join(sources(SYNTH).values())
    bodies = function_bodies(text)
    switches = [b for b in bodies.values() if re.search(r"\bswitch\s*\(", b)]
    assert switches, "no interpreter switch found"
    bad = []
    for body in switches:
        sw = body[re.search(r"\bswitch\s*\(", body).start():]
        called = set(re.findall(r"\b(\w+)\s*(?:<[^<>;]*>)?\s*\(", sw)) - {"switch", "if", "for"}
        for f in sorted(called):
            if re.search(r"#pragma\s+HLS\s+DATAFLOW", bodies.get(f, ""), re.I):
                bad.append(f)
    assert not bad, f"DATAFLOW regions called from inside the interpreter's switch: {bad}"
    # the check sees a violation when there is one
    demo = "void g() {\n#pragma HLS DATAFLOW\n a(); }\nvoid run() { switch (op) { case 1: g(); break; } }"
    b = function_bodies(demo)
    assert "DATAFLOW" in b["g"] and "g" in re.findall(r"\b(\w+)\s*\(", b["run"])
