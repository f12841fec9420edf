"""Where generated C runs: each target names its kernel ISA and, for the standalone harness,
the C compiler, its flags, and how to run the program on this machine (an emulator or nothing).

``native`` is resolved on the compiling machine to the best ISA its CPU runs. Cross targets
(``neon``, ``cortex-m``) only render C; building and running them needs their toolchain, which
``Target.missing()`` names when it is absent.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass

from qcc.errors import QccError


@dataclass(frozen=True)
class Target:
    name: str
    isa: str                       # kernel variants: scalar, avx2, avx512, neon
    cc: str = "gcc"                # compiler for the standalone harness
    cflags: tuple[str, ...] = ()   # target flags (the harness adds -O2 -std=c99)
    runner: tuple[str, ...] = ()   # how to run a harness program here, e.g. ("qemu-aarch64",)
    size: str = "size"             # binutils size for text/data/bss reports
    help: str = ""
    hosted: bool = True            # False: bare metal, no harness (see examples/firmware/)

    def missing(self) -> list[str]:
        """The tools this target's build-and-run needs that this machine does not have."""
        return [t for t in (self.cc, *self.runner[:1]) if shutil.which(t) is None]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("native", "native", help="the best ISA this machine's CPU runs (avx512, avx2, neon or scalar)"),
    Target("scalar", "scalar", help="portable C99, any CPU"),
    Target("avx2", "avx2", help="x86-64 with AVX2 (kernels carry their own target attributes)"),
    Target("avx512", "avx512", help="x86-64 with AVX-512 F/BW/VL, VPOPCNTDQ and VNNI (Ice Lake, Zen 4 and "
                                    "later): the popcount GEMMs count with vpopcntq, int8 convs use vpdpbusd, the "
                                    "other kernels are AVX2's"),
    Target("neon", "neon", cc="aarch64-linux-gnu-gcc", cflags=("-static",), runner=("qemu-aarch64",),
           size="aarch64-linux-gnu-size", help="aarch64 (Armv8-A) with NEON"),
    Target("cortex-m", "scalar", cc="arm-none-eabi-gcc", cflags=("-mcpu=cortex-m4", "-mthumb", "-ffreestanding"),
           size="arm-none-eabi-size", hosted=False,
           help="Arm Cortex-M (Thumb-2, bare metal): the portable kernels; examples/firmware/ runs them"),
)}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise QccError(f"target '{name}' is not supported; supported: {', '.join(TARGETS)}")
    return TARGETS[name]
