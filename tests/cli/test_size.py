"""``qcc inspect --size`` and the size line of ``qcc compile``: every number is derived again here
from its source: object sizes by compiling the written bundle with the target's compiler and
reading the target's own ``size -A``; weights from the C arrays and from the ONNX model's
initializers; the arena from the header and from the activations it holds."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qcc
from qcc.cli import main
from qcc.codegen import size as size_mod
from qcc.codegen.inspect import layer_info
from qcc.codegen.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "digits_w2a2.onnx"
ROW = re.compile(r"^  (\S+)\s+(\S+)\s+([\d,-]+)\s+([\d,-]+)\s+([\d,-]+)\s+([\d,-]+)\s+([\d,-]+)\s+([\d,]+)\s+(\S+)\s+(.*)$")


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _rows(out: str) -> dict[str, tuple]:
    return {m.group(1): m.groups()[1:] for m in map(ROW.match, out.splitlines()) if m and m.group(1) in TARGETS}


def _measure(target: str, tmp: Path) -> dict[str, int]:
    """Compile the bundle for ``target`` as a user would, then the target's compiler and size tool
    (when this machine has them)."""
    t = TARGETS[target]
    b = qcc.compile(MODEL, tmp, target=target, name="m")
    if not (shutil.which(t.cc) and shutil.which(t.size)):
        return {"c": b.c.read_text(), "arena": b.arena_size}
    flags = [f for f in t.cflags if f != "-static"]
    subprocess.run([t.cc, *flags, "-O2", "-std=c99", "-fstack-usage", "-c", str(b.c), "-o", str(tmp / "m.o")], check=True)
    frames = {ln.split("\t")[0].split(":")[-1]: int(ln.split("\t")[1]) for ln in (tmp / "m.su").read_text().splitlines()}
    out = subprocess.run([t.size, "-A", str(tmp / "m.o")], capture_output=True, text=True, check=True).stdout
    sec = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) >= 3 and p[0].startswith("."):
            sec[p[0]] = int(p[1])
    relro = sum(v for k, v in sec.items() if k.startswith(".data.rel.ro"))
    return {"text": sum(v for k, v in sec.items() if k.startswith(".text")),
            "rodata": sum(v for k, v in sec.items() if k.startswith(".rodata")) + relro,
            "data": sum(v for k, v in sec.items() if k.startswith(".data")) - relro,
            "bss": sum(v for k, v in sec.items() if k.startswith(".bss")), "c": b.c.read_text(),
            "stack": frames["m_run"] + max(v for k, v in frames.items() if k not in ("m_run", "m_cpu_supported")),
            "arena": b.arena_size}


def _onnx_fp32_weight_bytes(path) -> int:
    """4 bytes per element of every initializer quantized into a Conv/Gemm/MatMul weight."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    total = 0
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            src = n.input[1]
            while src not in inits and src in producer:  # through the weight quantizer / transposes
                src = producer[src].input[0]
            total += 4 * inits[src].size
    return total


def _c_weight_bytes(c: str) -> int:
    sizes = {"uint64_t": 8, "int16_t": 2, "int8_t": 1, "uint8_t": 1, "float": 4}
    return sum(sizes[t] * int(k) for t, k in re.findall(r"static const (\w+) L\d+_weight\[(\d+)\]", c))


def test_inspect_size_reports_every_target_from_its_own_tools(tmp_path, capsys):
    out = _run(["inspect", MODEL, "--size"], capsys)
    rows = _rows(out)
    assert set(rows) == {"scalar", "avx2", "avx512", "neon", "cortex-m"}  # native is one of them
    _, low = qcc.api.lower_model(MODEL)
    layers = [layer_info(n, low.tensors) for n in low.nodes if n.op == "layer"]
    fp32 = _onnx_fp32_weight_bytes(MODEL)
    assert fp32 == sum(i.fp32_bytes for i in layers)  # no dead channels in this model
    bits = sum(-(-n.attrs.weight.size * n.attrs.w_spec.bits // 8) for n in low.nodes if n.op == "layer")
    measured = 0
    for target, (isa, text, rodata, data, bss, stack, weights, ratio, tool) in rows.items():
        t = TARGETS[target]
        assert isa == t.isa
        m = _measure(target, tmp_path / target)
        # the weights as stored in this target's C: at least the layers' bits, at most their padding more
        # (avx2 and avx512 store a bit layer's rows unpadded, in blocks of 32 or 8 channels: at least their
        # bits; the x86 dot-product convs pad the output channels to blocks of 16 or 32)
        assert _int(weights) == _c_weight_bytes(m["c"])
        least = sum(i.weight_bytes for i in layers) if isa not in ("avx2", "avx512") else bits
        blocks = [-(-n.attrs.weight.shape[0] // 32) * 32 / n.attrs.weight.shape[0] for n in low.nodes if n.op == "layer"]
        assert least <= _int(weights) <= 1.05 * sum(i.weight_bytes * b for i, b in zip(layers, blocks))
        assert ratio == f"{fp32 / _int(weights):.1f}x"
        if shutil.which(t.cc) and shutil.which(t.size):
            assert tool.startswith(f"{t.size} -A")
            assert (_int(text), _int(rodata), _int(data), _int(bss)) == (m["text"], m["rodata"], m["data"], m["bss"])
            assert _int(stack) == m["stack"]
            assert _int(rodata) >= _int(weights)  # the weights are read-only data
            measured += 1
        else:
            assert text == "-" and "not installed" in tool
    assert measured >= 1
    assert re.search(rf"weights: [\d,]+ bytes as compiled vs {fp32:,} bytes for the same layers in fp32", out)
    m = re.search(r"arena: ([\d,]+) bytes vs ([\d,]+) bytes without reuse \(activations ([\d,]+) \+ im2col scratch ([\d,]+);", out)
    arena, without, acts, scratch = map(_int, m.groups())
    header = (tmp_path / "scalar" / "m.h").read_text()
    assert arena == low.meta["arena_size"] == int(re.search(r"#define M_ARENA_SIZE (\d+)", header).group(1))
    assert without == acts + scratch and arena <= without
    # the activations: every tensor the model computes, at least the largest one lives in the arena
    biggest = max(8 * int(np.prod(t.shape[:-1])) * t.quant.bits * -(-t.shape[-1] // 64) if t.dtype == "bits"
                  else {"i16": 2, "f32": 4}[t.dtype] * t.size
                  for n, t in low.tensors.items() if n not in low.inputs and t.data is None)
    assert biggest <= arena and acts >= biggest


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("arm-none-eabi-size") is None,
                    reason="arm-none-eabi-gcc/arm-none-eabi-size not installed (CI installs gcc-arm-none-eabi)")
def test_compile_prints_the_targets_size(tmp_path, capsys):
    out = _run(["compile", MODEL, "-o", tmp_path / "out", "--target", "cortex-m"], capsys)
    line = out.strip().splitlines()[-1]
    m = re.fullmatch(r"size \(cortex-m\): text ([\d,]+), rodata ([\d,]+), data ([\d,]+), bss ([\d,]+), stack [\d,]+ bytes "
                     r"\(arm-none-eabi-size -A\); weights ([\d,]+) bytes vs ([\d,]+) fp32 \(\S+\); "
                     r"arena ([\d,]+) vs ([\d,]+) bytes without reuse \(\S+\)", line)
    assert m, line
    got = _measure("cortex-m", tmp_path / "again")
    assert tuple(map(_int, m.groups()[:4])) == (got["text"], got["rodata"], got["data"], got["bss"])
    assert _int(m.group(5)) == _c_weight_bytes((tmp_path / "out" / "model.c").read_text())
    assert _int(m.group(6)) == _onnx_fp32_weight_bytes(MODEL)
    assert _int(m.group(7)) == got["arena"] <= _int(m.group(8))


def test_absent_size_tool_is_named(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(size_mod.shutil, "which", lambda tool: None if tool == "arm-none-eabi-size" else real(tool))
    _, low = qcc.api.lower_model(MODEL)
    r = size_mod.size_report(low, ["cortex-m"], source="digits_w2a2.onnx")
    assert r.targets[0].sections is None
    assert r.targets[0].note == "not measured: arm-none-eabi-size not installed"
    text = r.format()
    assert "not measured: arm-none-eabi-size not installed" in text
    row = _rows(text)["cortex-m"]
    assert row[1:6] == ("-",) * 5 and _int(row[6]) > 0  # weights are known without the tool


def test_float_twin_failure_is_said_not_hidden(monkeypatch, capsys):
    """The fp32 model's bytes come from its float twin; when that fails, the report still stands
    and says why the figure is missing."""
    import qcc.frontend.twins as twins

    def broken(model):
        raise ValueError("no twin today")

    out = _run(["inspect", MODEL, "--size", "--target", "scalar"], capsys)
    assert re.search(r"the fp32 model's initializers: [\d,]+ bytes", out)
    monkeypatch.setattr(twins, "float_twin", broken)
    out = _run(["inspect", MODEL, "--size", "--target", "scalar"], capsys)
    assert "the fp32 model's initializers: not counted (the float twin failed: ValueError: no twin today)" in out
    assert _rows(out)["scalar"]
