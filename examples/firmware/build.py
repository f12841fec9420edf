"""Build (and run) the Cortex-M firmware example for a model.

    python examples/firmware/build.py examples/models/digits_w1a1.onnx \
        --inputs examples/models/digits_inputs.npz --samples 4 --run

Compiles the model with ``qcc.compile(..., target="cortex-m")``, writes ``fw_model.h`` (the
model's header, the ``FW_*`` names main.c uses and the first samples as float literals), builds
``fw.elf`` for QEMU's mps2-an386 board (Cortex-M4) with arm-none-eabi-gcc, and with ``--run``
runs it under qemu-system-arm with semihosting and prints what it prints:

    output 0: 0xc1a6f9c0 0x...       one line per sample, each float as the hex of its bits
    ticks 0: 26202                    SysTick ticks of that run (x 40 = instructions under QEMU)
    flash: ... ram: ...               from the linker's symbols

Everything goes to ``--out`` (default build/firmware). The functions are importable
(tests/e2e/test_firmware.py uses them).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES = ("startup.c", "semihost.c", "main.c")
QEMU = ("qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
        "-semihosting-config", "enable=on,target=native", "-icount", "shift=0")
# With -icount shift=0 QEMU runs one instruction per virtual nanosecond, and the board's SysTick
# counts its 25 MHz core clock: one tick is 40 instructions (checked with a counted loop).
INSTRUCTIONS_PER_TICK = 40
FLOAT_ABI = {  # the M4F's single-precision FPU, or software floats (any Cortex-M)
    "hard": ("-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
    "soft": ("-mfloat-abi=soft",),
}
WARNINGS = ("-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")


def missing_tools() -> list[str]:
    """The tools building and running the firmware needs that this machine lacks."""
    return [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]


def _inputs(low, inputs, samples: int) -> np.ndarray:
    """``samples`` rows of the model's inputs, concatenated in graph order (NCHW floats)."""
    rows = []
    if inputs is None:
        rng = np.random.default_rng(0)
        for n in low.inputs:
            rows.append(rng.standard_normal((samples, low.tensors[n].size)).astype(np.float32))
    else:
        data = np.load(inputs) if isinstance(inputs, (str, Path)) else inputs
        keys = list(data.keys()) if hasattr(data, "keys") else list(data.files)
        for i, n in enumerate(low.inputs):
            key = n if n in keys else keys[i]
            a = np.asarray(data[key], np.float32)
            if len(a) < samples:
                raise SystemExit(f"{key}: {len(a)} samples, fewer than {samples}")
            rows.append(a[:samples].reshape(samples, -1))
    x = np.concatenate(rows, axis=1)
    return x


def write_model_header(out: Path, name: str, x: np.ndarray) -> Path:
    from qcc.codegen.render import cfloat

    NAME = name.upper()
    lines = [f"/* fw_model.h: written by examples/firmware/build.py for model '{name}'. */",
             "#ifndef FW_MODEL_H", "#define FW_MODEL_H", f'#include "{name}.h"', "",
             f'#define FW_MODEL_NAME "{name}"', f"#define FW_RUN {name}_run",
             f"#define FW_ARENA_SIZE {NAME}_ARENA_SIZE", f"#define FW_ARENA_ALIGN {NAME}_ARENA_ALIGN",
             f"#define FW_INPUT_SIZE {NAME}_INPUT_SIZE", f"#define FW_OUTPUT_SIZE {NAME}_OUTPUT_SIZE",
             f"#define FW_SAMPLES {len(x)}u", "",
             "static const float fw_inputs[FW_SAMPLES][FW_INPUT_SIZE] = {"]
    for row in x:
        vals = [cfloat(v) for v in row]
        lines.append("    {" + ", ".join(vals) + "},")
    lines += ["};", "", "#endif"]
    path = out / "fw_model.h"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    if r.stderr.strip():  # -Werror makes warnings fail; anything else is worth seeing
        print(r.stderr, file=sys.stderr)


def build_firmware(model, out, inputs=None, samples: int = 4, name: str = "model",
                   float_abi: str = "hard", stack_size: int = 0x8000) -> Path:
    """Compile ``model`` for cortex-m into ``out`` and link ``out/fw.elf``; returns its path.
    ``inputs``: an .npz path or a dict of arrays (one per model input, by name or in order);
    default: random normal samples."""
    import qcc
    from qcc.api import lower_model
    from qcc.codegen.targets import TARGETS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = qcc.compile(model, out, target="cortex-m", name=name, force=True)
    _, low = lower_model(model)
    write_model_header(out, name, _inputs(low, inputs, samples))
    t = TARGETS["cortex-m"]
    flags = [*t.cflags, *FLOAT_ABI[float_abi], *WARNINGS, "-ffunction-sections", "-fdata-sections"]
    objs = [out / "qcc_model.o"]
    _run([t.cc, *flags, "-c", str(bundle.c), "-o", str(objs[0])])
    for src in SOURCES:
        obj = out / (Path(src).stem + ".o")
        _run([t.cc, *flags, "-I", str(out), "-I", str(HERE), "-c", str(HERE / src), "-o", str(obj)])
        objs.append(obj)
    elf = out / "fw.elf"
    _run([t.cc, *t.cflags, *FLOAT_ABI[float_abi], "-nostartfiles", "--specs=nano.specs",
          "-T", str(HERE / "an386.ld"), f"-Wl,--defsym=STACK_SIZE={stack_size}", "-Wl,--gc-sections",
          f"-Wl,-Map={out / 'fw.map'}", *map(str, objs), "-o", str(elf)])
    return elf


def run_firmware(elf, timeout: float = 60) -> str:
    """Run ``elf`` under qemu-system-arm; what it printed. Raises if it did not exit with 0."""
    r = subprocess.run([*QEMU, "-kernel", str(elf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout)  # QEMU writes the semihosting console to stderr
    if r.returncode != 0 or not re.search(r"^done\s*$", r.stdout, re.M):
        raise RuntimeError(f"firmware exited with {r.returncode}:\n{r.stdout}")
    return r.stdout


def parse_outputs(text: str) -> np.ndarray:
    """The ``output i: 0x...`` lines as float32 rows (their bits exactly)."""
    rows = []
    for m in re.finditer(r"^output (\d+):((?: 0x[0-9a-f]{8})*)\s*$", text, re.M):
        assert int(m.group(1)) == len(rows), "samples out of order"
        rows.append([int(h, 16) for h in m.group(2).split()])
    return np.asarray(rows, np.uint32).view(np.float32)


def parse_instructions(text: str) -> list[int]:
    """Instructions each run took under QEMU (-icount shift=0), from the ``ticks i: n`` lines."""
    return [INSTRUCTIONS_PER_TICK * int(n) for n in re.findall(r"^ticks \d+: (\d+)\s*$", text, re.M)]


def parse_sizes(text: str) -> dict[str, int]:
    """flash, model_code, model_constants, ram, data, bss, arena, stack, stack_used (bytes)."""
    m = re.search(r"flash: (\d+) bytes \(model code (\d+), model constants (\d+)\)\s*"
                  r"ram: (\d+) bytes \(data (\d+), bss (\d+) with the arena (\d+), stack (\d+) reserved, (\d+) used\)",
                  text)
    if not m:
        raise ValueError("no size report in the firmware's output")
    keys = ("flash", "model_code", "model_constants", "ram", "data", "bss", "arena", "stack", "stack_used")
    return dict(zip(keys, map(int, m.groups())))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--inputs", help=".npz with the model's inputs (default: random)")
    p.add_argument("--samples", type=int, default=4, help="samples embedded in the firmware (default 4)")
    p.add_argument("--name", default="model", help="the model's C name (qcc compile --name)")
    p.add_argument("--out", default="build/firmware", help="output directory (default build/firmware)")
    p.add_argument("--float-abi", choices=list(FLOAT_ABI), default="hard",
                   help="hard: the M4F's FPU (default); soft: software floats")
    p.add_argument("--stack-size", type=lambda v: int(v, 0), default=0x8000,
                   help="bytes reserved for the stack (default 32768; the firmware prints how much it used)")
    p.add_argument("--run", action="store_true", help="run it under qemu-system-arm")
    args = p.parse_args(argv)
    elf = build_firmware(args.model, args.out, args.inputs, args.samples, args.name, args.float_abi, args.stack_size)
    print(f"built {elf}")
    if args.run:
        print(run_firmware(elf), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
