"""How big a compiled model is, per target: ``qcc inspect --size`` and the last line of ``qcc compile``.

For each target the bundle is rendered with that target's kernels and compiled to an object
with the target's C compiler (``-O2 -std=c99`` and its flags); the object's sections are read
with the target's binutils ``size -A`` (``arm-none-eabi-size`` for cortex-m,
``aarch64-linux-gnu-size`` for neon). Where the compiler or the size tool is absent, the
report says so instead of guessing:

- text / rodata / data / bss of the object: code, constants (weights, thresholds: flash on a
  microcontroller), initialized and zeroed writable data (none: the arena is the caller's);
- weight bytes: the weight arrays in the generated C (``L<i>_weight``, as stored, with any
  padding the kernels need) against the same layers' weights in fp32 (``qcc inspect``'s
  ``LayerInfo``) and, when known, every initializer of the fp32 twin model;
- arena bytes (the one buffer the caller provides) against the sum of all activation tensors
  and im2col scratch rows, which is what they would take without reuse;
- stack bytes of one call, from GCC's ``-fstack-usage``: the frame of ``<name>_run`` plus the
  largest frame of the functions it calls (the kernels are leaves but for memcpy/memset), so
  the RAM a call needs is the arena plus this (plus the caller's own frames).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qcc.codegen.inspect import layer_info
from qcc.codegen.render import Sources, render
from qcc.codegen.targets import TARGETS, Target
from qcc.ir.graph import Graph
from qcc.passes.plan_memory import nbytes

OBJECT_CFLAGS = ("-O2", "-std=c99")
CTYPE_BYTES = {"float": 4, "int32_t": 4, "uint32_t": 4, "uint64_t": 8, "int16_t": 2, "uint16_t": 2, "int8_t": 1, "uint8_t": 1}
_ARRAY = re.compile(r"^static const (\w+) (\w+)\[(\d+)\] = \{", re.M)
_WEIGHT = re.compile(r"L\d+_weight")


@dataclass(frozen=True)
class Sections:
    """Bytes of an object file's sections, as the size tool reports them."""

    text: int
    rodata: int
    data: int
    bss: int
    tool: str  # the command that measured them, e.g. "arm-none-eabi-size -A"
    stack: int | None = None  # bytes of stack one call takes (-fstack-usage), None if unknown


@dataclass(frozen=True)
class TargetSize:
    target: str
    isa: str
    weight_bytes: int         # L<i>_weight arrays in the generated C
    const_bytes: int          # every static const array in the generated C
    sections: Sections | None
    note: str = ""            # why sections is None
    command: str = ""         # how the object was compiled


@dataclass(frozen=True)
class SizeReport:
    source: str
    layer_weight_bytes: int   # the layers' weights as compiled (qcc inspect)
    fp32_layer_bytes: int     # the same weights in fp32
    fp32_model_bytes: int | None  # every initializer of the fp32 twin, when known
    arena_bytes: int
    activation_bytes: int     # every activation tensor (not the inputs), each in its own buffer
    scratch_bytes: int        # im2col rows, each layer its own
    targets: tuple[TargetSize, ...]
    fp32_model_note: str = ""     # why fp32_model_bytes is unknown, when it was asked for

    def format(self) -> str:
        return format_report(self)


def c_arrays(c_text: str) -> list[tuple[str, str, int]]:
    """(ctype, name, bytes) of every ``static const`` array in generated C."""
    return [(t, n, CTYPE_BYTES[t] * int(k)) for t, n, k in _ARRAY.findall(c_text)]


def parse_size_a(text: str) -> dict[str, int]:
    """``size -A`` output -> {section: bytes}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = out.get(parts[0], 0) + int(parts[1])
    return out


def call_stack_bytes(su_text: str, name: str) -> int | None:
    """Stack of one ``<name>_run`` call from GCC's ``.su`` lines (``file:line:col:function<TAB>bytes<TAB>kind``):
    its frame plus the largest other frame (every kernel is called from ``<name>_run`` and calls
    none but memcpy/memset); None if a frame is dynamic (alloca, VLA) or the run is missing."""
    frames, run = [], None
    for line in su_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        fn, size, kind = parts[0].rsplit(":", 1)[-1], int(parts[1]), parts[2]
        if "dynamic" in kind and "bounded" not in kind:
            return None
        if fn == f"{name}_run":
            run = size
        elif fn != f"{name}_cpu_supported":
            frames.append(size)
    return None if run is None else run + max(frames, default=0)


def _sum(sections: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in sections.items() if k == prefix or k.startswith(prefix + "."))


def object_sections(c_text: str, h_text: str, name: str, t: Target) -> tuple[Sections | None, str, str]:
    """Compile the bundle to an object for ``t`` and measure it: (sections or None, note, command)."""
    absent = [tool for tool in (t.cc, t.size) if shutil.which(tool) is None]
    if absent:
        return None, f"not measured: {' and '.join(absent)} not installed", ""
    flags = [f for f in t.cflags if f != "-static"]  # a link flag
    with tempfile.TemporaryDirectory(prefix="qcc-size-") as d:
        work = Path(d)
        for fname, text in Sources(c_text, h_text).files(name).items():
            (work / fname).write_text(text)
        cmd = [t.cc, *flags, *OBJECT_CFLAGS, "-fstack-usage", "-c", f"{name}.c", "-o", f"{name}.o"]
        shown = " ".join([t.cc, *flags, *OBJECT_CFLAGS])
        try:
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
                return None, f"not measured: {t.cc} failed: {first}", shown
            s = subprocess.run([t.size, "-A", f"{name}.o"], cwd=work, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"not measured: {type(e).__name__}: {e}", shown
        if s.returncode != 0:
            return None, f"not measured: {t.size} failed: {s.stderr.strip()[:200]}", shown
        su = work / f"{name}.su"
        stack = call_stack_bytes(su.read_text(), name) if su.exists() else None
    sec = parse_size_a(s.stdout)
    relro = _sum(sec, ".data.rel.ro")  # const structs holding pointers, in position-independent code
    sections = Sections(text=_sum(sec, ".text"), rodata=_sum(sec, ".rodata") + relro, data=_sum(sec, ".data") - relro,
                        bss=_sum(sec, ".bss"), tool=f"{t.size} -A", stack=stack)
    return sections, "", shown


def resolve_isa(t: Target) -> str:
    if t.isa != "native":
        return t.isa
    from qcc.codegen.build import host_isa
    return host_isa()


def weight_bytes(c_source: str) -> int:
    """Bytes of the layers' weights as a rendered bundle stores them (its L<i>_weight arrays:
    the layout of its ISA)."""
    return sum(b for _, n, b in c_arrays(c_source) if _WEIGHT.fullmatch(n))


def target_size(low: Graph, t: Target, name: str = "model", source: str = "") -> TargetSize:
    isa = resolve_isa(t)
    src = render(low, name, source, isa=isa)
    sections, note, cmd = object_sections(src.c, src.h, name, t)
    return TargetSize(t.name, isa, weight_bytes=weight_bytes(src.c), const_bytes=sum(b for _, _, b in c_arrays(src.c)),
                      sections=sections, note=note, command=cmd)


def default_targets() -> list[str]:
    """Every target but ``native`` (which is one of the others on any machine)."""
    return [n for n in TARGETS if n != "native"]


def size_report(low: Graph, targets: list[str] | None = None, name: str = "model", source: str = "",
                fp32_model_bytes: int | None = None, fp32_model_note: str = "") -> SizeReport:
    """The report for the lowered, memory-planned graph ``low`` on ``targets`` (default: all)."""
    layers = [layer_info(n, low.tensors) for n in low.nodes if n.op == "layer"]
    roots = low.meta["arena_root"]
    acts = sum(nbytes(t) for n, t in low.tensors.items() if n not in low.inputs and roots.get(n) == n)
    scratch = sum(b for _, b in low.meta["scratch"].values())
    return SizeReport(source=source, layer_weight_bytes=sum(i.weight_bytes for i in layers),
                      fp32_layer_bytes=sum(i.fp32_bytes for i in layers), fp32_model_bytes=fp32_model_bytes,
                      fp32_model_note=fp32_model_note,
                      arena_bytes=low.meta["arena_size"], activation_bytes=acts, scratch_bytes=scratch,
                      targets=tuple(target_size(low, TARGETS[t], name, source) for t in (targets or default_targets())))


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1f}x" if b else "-"


def format_report(r: SizeReport) -> str:
    rows = [("target", "isa", "text", "rodata", "data", "bss", "stack", "weights", "vs fp32", "measured with")]
    for t in r.targets:
        s = t.sections
        cells = ((f"{s.text:,}", f"{s.rodata:,}", f"{s.data:,}", f"{s.bss:,}", "-" if s.stack is None else f"{s.stack:,}")
                 if s else ("-",) * 5)
        rows.append((t.target, t.isa, *cells, f"{t.weight_bytes:,}", _ratio(r.fp32_layer_bytes, t.weight_bytes),
                     f"{s.tool} ({t.command})" if s else t.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 7, 8}
    lines = [f"size of {r.source or 'the model'} as compiled, per target (bytes; the object of <name>.c):"]
    lines += ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in rows]
    fp32 = f"weights: {r.layer_weight_bytes:,} bytes as compiled vs {r.fp32_layer_bytes:,} bytes for the same layers in fp32 " \
           f"({_ratio(r.fp32_layer_bytes, r.layer_weight_bytes)} smaller)"
    if r.fp32_model_bytes is not None:
        fp32 += f"; the fp32 model's initializers: {r.fp32_model_bytes:,} bytes"
    elif r.fp32_model_note:
        fp32 += f"; the fp32 model's initializers: not counted ({r.fp32_model_note})"
    without = r.activation_bytes + r.scratch_bytes
    lines += [fp32, f"arena: {r.arena_bytes:,} bytes vs {without:,} bytes without reuse (activations {r.activation_bytes:,} "
                    f"+ im2col scratch {r.scratch_bytes:,}; {_ratio(without, r.arena_bytes)} smaller)"]
    return "\n".join(lines)


def summary_line(r: SizeReport) -> str:
    """One line for ``qcc compile``: the first target's object and the two ratios."""
    t = r.targets[0]
    s = t.sections
    stack = "" if s is None or s.stack is None else f", stack {s.stack:,}"
    obj = (f"text {s.text:,}, rodata {s.rodata:,}, data {s.data:,}, bss {s.bss:,}{stack} bytes ({s.tool})" if s else t.note)
    where = t.target if t.target == t.isa or t.target == "cortex-m" else f"{t.target}, {t.isa}"
    return (f"size ({where}): {obj}; weights {t.weight_bytes:,} bytes vs {r.fp32_layer_bytes:,} fp32 "
            f"({_ratio(r.fp32_layer_bytes, t.weight_bytes)}); arena {r.arena_bytes:,} vs {r.activation_bytes + r.scratch_bytes:,} "
            f"bytes without reuse ({_ratio(r.activation_bytes + r.scratch_bytes, r.arena_bytes)})")
