"""qcc_rt.h's portable paths, built on the host: the SWAR popcount used on cores without a
popcount instruction (Cortex-M; forced here with -DQCC_SWAR_POPCOUNT) against Python's count,
and the libm-free rounding (32-bit integers only) against numpy on edge values: ties, signed
zeros, the 2^23 boundary, huge values, infinities and NaN."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from qcc.codegen.render import RUNTIME_DIR

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

PROGRAM = r"""
#include <stdio.h>
#include "qcc_rt.h"
int main(void) {
    unsigned long long w;
    unsigned int u;
    int n;
    if (scanf("%d", &n) != 1) return 1;
    for (int i = 0; i < n; i++) {
        if (scanf("%llx", &w) != 1) return 1;
        printf("%d\n", (int)qcc_popcount64((uint64_t)w));
    }
    while (scanf("%x", &u) == 1) {
        union { float f; uint32_t u; } v, r[5];
        v.u = u;
        r[0].f = qcc_floorf(v.f); r[1].f = qcc_ceilf(v.f); r[2].f = qcc_truncf(v.f);
        r[3].f = qcc_round_half_even(v.f); r[4].f = qcc_round_mode(v.f, QCC_HALF_UP);
        printf("%08x %08x %08x %08x %08x\n", r[0].u, r[1].u, r[2].u, r[3].u, r[4].u);
    }
    return 0;
}
"""


def _floats() -> np.ndarray:
    edge = [0.0, -0.0, 0.3, -0.3, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 1.0, -1.0,
            8388607.5, -8388607.5, 8388606.5, 4194303.5, 8388608.0, -8388608.0, 8388609.0, 16777216.0,
            1e10, -1e10, 2.0 ** 62, -(2.0 ** 63), 3e38, -3e38, 1e-45, -1e-45, np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(0)
    return np.concatenate([np.asarray(edge, np.float32), rng.uniform(-1e7, 1e7, 300).astype(np.float32),
                           (rng.integers(-64, 64, 300) * 0.25).astype(np.float32),
                           rng.standard_normal(300).astype(np.float32)])


@pytest.mark.parametrize("swar", [False, True])
def test_popcount_and_rounding(tmp_path, swar):
    (tmp_path / "t.c").write_text(PROGRAM)
    (tmp_path / "qcc_rt.h").write_text((RUNTIME_DIR / "qcc_rt.h").read_text())
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", *(["-DQCC_SWAR_POPCOUNT"] if swar else []),
                    "t.c", "-o", "t"], cwd=tmp_path, check=True)
    rng = np.random.default_rng(1)
    words = [0, 2 ** 64 - 1, 1, 2 ** 63, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA, 0xFFFFFFFF, 0xFFFFFFFF00000000]
    words += [int(v) for v in rng.integers(0, 2 ** 63, 500, dtype=np.int64)] + [int(v) << 1 | 1 for v in rng.integers(0, 2 ** 62, 200)]
    # sparse and dense words too
    words += [int(np.bitwise_or.reduce(1 << rng.choice(64, k, replace=False).astype(object))) for k in range(1, 64)]
    x = _floats()
    stdin = f"{len(words)}\n" + "\n".join(f"{w:x}" for w in words) + "\n" + "\n".join(f"{b:08x}" for b in x.view(np.uint32))
    out = subprocess.run([str(tmp_path / "t")], input=stdin, capture_output=True, text=True, check=True).stdout.split("\n")
    assert [int(v) for v in out[:len(words)]] == [bin(w).count("1") for w in words]
    got = np.array([[int(h, 16) for h in line.split()] for line in out[len(words):] if line], np.uint32).view(np.float32)
    half_up = np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))  # QONNX HALF_UP
    want = np.stack([np.floor(x), np.ceil(x), np.trunc(x), np.rint(x), half_up], axis=1)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].astype(np.float32).view(np.uint32)), \
        x[np.nonzero(got.view(np.uint32) != want.astype(np.float32).view(np.uint32))[0]]
