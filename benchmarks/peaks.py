"""The instruction-throughput peaks that bound qcc's kernels on this CPU, measured.

    python benchmarks/peaks.py

Each instruction runs in 10 independent dependency chains (more than any latency x width
product here), so the rate is the port throughput, not the latency. Printed per nanosecond
and, with the clock estimated from a chain of dependent scalar adds (one per cycle), per
cycle, then the bounds they imply:

- XNOR/AND-popcount (vpshufb nibble table): 8 vector ops per 256-bit pair of operands (xor,
  and, shift, and, two vpshufb, two byte adds), two of them vpshufb; 6 ops when both operands
  are stored already split into nibbles; qcc's table tiles look the weights' nibbles up in the
  row's 16-byte table of popcount(nibble XOR n): one vpshufb and one byte add per 4 row bits x
  32 columns, 2 ops per 128 bit-MACs with the weights' nibbles taken apart beforehand (its
  AVX2 GEMMs from 64 rows on), and 7 per 256 for one row when the loop takes them apart (and,
  shift, and per 32 weight bytes: the batch-1 FC), 4.75 for 4 rows sharing that split;
- int16 conv (vpmaddwd): 16 MACs per instruction;
- u8 x s8 (vpmaddubsw): 32 MACs per instruction, but its int16 pair sums saturate (an exact
  kernel cannot use it on 8-bit activations), and the widening to int32 needs a vpmaddwd per
  vpmaddubsw, which share ports: 16 MACs per port-cycle at best;
- fp32 (vfmadd231ps): 8 MACs per instruction: what onnxruntime's float conv approaches;
- where the CPU has AVX-512 VPOPCNTDQ (qcc's avx512 ISA): 512-bit vpxorq, and a vpaddq +
  vpopcntq step; the avx512 tile takes 3 ops (xor, vpopcntq, add) per 512 bit-MACs.
"""
from __future__ import annotations

import hashlib
import importlib.util
import time

import cffi

from qcc.codegen.build import cache_dir, host_isa

CHAINS = 10
SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#define R10(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
#define PEAK(NAME, T, INIT, STEP)                                                   \
__attribute__((target("avx2,fma"))) double NAME(int64_t n) {                         \
    T w = INIT(3);                                                                  \
    _Pragma("GCC diagnostic ignored \"-Wunused-variable\"")                         \
    R10(DECL_##T)                                                                   \
    for (int64_t i = 0; i < n; i++) {                                               \
        R10(STEP)                                                                   \
        __asm__("" : "+x"(w));                                                      \
    }                                                                               \
    float s = 0;                                                                    \
    R10(SUM_##T)                                                                    \
    return s;                                                                       \
}
#define DECL___m256i(k) __m256i a##k = _mm256_set1_epi16((short)(k + 1));
#define DECL___m256(k) __m256 a##k = _mm256_set1_ps(1.0f / (float)(k + 1));
#define SUM___m256i(k) s += (float)_mm256_cvtsi256_si32(a##k);
#define SUM___m256(k) s += _mm256_cvtss_f32(a##k);
#define XOR(k) a##k = _mm256_xor_si256(a##k, w);
#define SHUF(k) a##k = _mm256_shuffle_epi8(a##k, w);
#define MADD(k) a##k = _mm256_madd_epi16(a##k, w);
#define MADDUBS(k) a##k = _mm256_maddubs_epi16(a##k, w);
#define FMA(k) a##k = _mm256_fmadd_ps(a##k, w, w);
#define SETI(v) _mm256_set1_epi16((short)(v))
#define SETF(v) _mm256_set1_ps(1.0f / (float)(v))
PEAK(peak_pxor, __m256i, SETI, XOR)
PEAK(peak_pshufb, __m256i, SETI, SHUF)
PEAK(peak_pmaddwd, __m256i, SETI, MADD)
PEAK(peak_pmaddubsw, __m256i, SETI, MADDUBS)
PEAK(peak_fma, __m256, SETF, FMA)
/* AVX-512 (called only where the CPU has it): 512-bit xor and vpopcntq */
#define PEAK512(NAME, STEP)                                                         \
__attribute__((target("avx512f,avx512vpopcntdq"))) double NAME(int64_t n) {         \
    __m512i w = _mm512_set1_epi64(3);                                               \
    R10(DECL512)                                                                    \
    for (int64_t i = 0; i < n; i++) {                                               \
        R10(STEP)                                                                   \
        __asm__("" : "+v"(w));                                                      \
    }                                                                               \
    double s = 0;                                                                   \
    R10(SUM512)                                                                     \
    return s;                                                                       \
}
#define DECL512(k) __m512i a##k = _mm512_set1_epi64(k + 1);
#define SUM512(k) s += (double)_mm512_reduce_add_epi64(a##k);
#define XOR512(k) a##k = _mm512_xor_si512(a##k, w);
#define POP512(k) a##k = _mm512_popcnt_epi64(_mm512_add_epi64(a##k, w));
PEAK512(peak_pxorq512, XOR512)
PEAK512(peak_popcntq512, POP512)
int64_t clock_adds(int64_t n) {
    uint64_t x = 1;
    for (int64_t i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return (int64_t)x;
}
"""


def _load():
    ffi = cffi.FFI()
    ffi.cdef("double peak_pxor(int64_t); double peak_pshufb(int64_t); double peak_pmaddwd(int64_t); double peak_pmaddubsw(int64_t);"
             "double peak_fma(int64_t); double peak_pxorq512(int64_t); double peak_popcntq512(int64_t);"
             "int64_t clock_adds(int64_t);")
    module = "_qcc_peaks_" + hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    tmp = cache_dir() / module
    tmp.mkdir(parents=True, exist_ok=True)
    ffi.set_source(module, SOURCE, extra_compile_args=["-O2"])
    spec = importlib.util.spec_from_file_location(module, ffi.compile(tmpdir=str(tmp), verbose=False))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.lib


def _rate(fn, per_call: int, n: int = 2_000_000) -> float:
    """Best of 5: operations per nanosecond."""
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        fn(n)
        best = max(best, per_call * n / (time.perf_counter() - t0) * 1e-9)
    return best


def main() -> None:
    lib = _load()
    ghz = _rate(lib.clock_adds, 4, 50_000_000)
    names = ("pxor", "pshufb", "pmaddwd", "pmaddubsw", "fma") + (("pxorq512",) if host_isa() == "avx512" else ())
    rates = {name: _rate(getattr(lib, f"peak_{name}"), CHAINS) for name in names}
    if host_isa() == "avx512":  # each step is a vpaddq and a vpopcntq
        rates["popcntq512"] = _rate(lib.peak_popcntq512, CHAINS)
    print(f"clock (dependent scalar adds): {ghz:.2f} GHz")
    for name, r in rates.items():
        print(f"v{name:<10} {r:5.2f} per ns  {r / ghz:4.2f} per cycle")
    alu = rates["pxor"]  # any vector ALU op
    bounds = {
        # per 256-bit operand pair: xor/and, and, srli, and, 2 vpshufb, 2 vpaddb = 8 vector ops
        "XNOR/AND-popcount (nibble table), bit-MACs": 256 * min(alu / 8, rates["pshufb"] / 2),
        # both operands stored as pre-split nibbles: 2 xor, 2 vpshufb, 2 vpaddb
        "  ... both operands pre-split (6 ops), bit-MACs": 256 * min(alu / 6, rates["pshufb"] / 2),
        # the table tile: the row's nibble table indexed by 32 columns' split nibbles, vpshufb + vpaddb
        "  ... table tile (vpshufb + vpaddb per 128), bit-MACs": 128 * min(alu / 2, rates["pshufb"]),
        # the table tile for one row, the stored weight bytes' nibbles taken apart in the loop
        "  ... table tile, 1 row (7 ops per 256), bit-MACs": 256 * min(alu / 7, rates["pshufb"] / 2),
        "int16 vpmaddwd, MACs": 16 * rates["pmaddwd"],
        "u8xs8 vpmaddubsw + vpmaddwd widening, MACs": 32 * min(rates["pmaddubsw"], rates["pmaddwd"]) / 2,
        "fp32 FMA, MACs": 8 * rates["fma"],
    }
    if "pxorq512" in rates:
        # avx512 tile: per 512-bit word x 8 columns, vpxorq + vpopcntq + vpaddq (3 ops); the
        # popcount step measured above is a vpaddq and a vpopcntq
        bounds["XNOR-popcount (vpopcntq, 512-bit), bit-MACs"] = 512 * min(rates["pxorq512"] / 3, rates["popcntq512"])
    print("\nupper bounds (G per second):")
    for name, b in bounds.items():
        print(f"  {name:<46} {b:7.1f}  ({b / ghz:5.1f} per cycle)")
    ratio = bounds["  ... table tile (vpshufb + vpaddb per 128), bit-MACs"] / bounds["fp32 FMA, MACs"]
    print(f"\nw1a1 layer at the popcount bound / fp32 at the FMA peak: {ratio:.1f}x (avx2 table tile)", end="")
    if "pxorq512" in rates:
        print(f", {bounds['XNOR-popcount (vpopcntq, 512-bit), bit-MACs'] / bounds['fp32 FMA, MACs']:.1f}x (avx512 tile)", end="")
    print()


if __name__ == "__main__":
    main()
