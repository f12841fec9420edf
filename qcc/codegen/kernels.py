"""The one list of kernel variants, and how a kernel op picks its variant.

A variant is named for everything that specializes it, with one grammar for all:
``qcc_<family>_<operands>_<MR>x<NR>__<isa>`` (scalar kernels are 1x1), for example
``qcc_bgemm_pm1xpm1_bits_1x1__scalar``. The name is derived from the fields; ``KERNELS``
is the only place a variant is declared, and tests iterate over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from qcc.passes.lower import MAX_PLANE_PAIRS, PLANE_BITS

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"
MAX_TAPS = 256  # kh * kw of the bit-plane kernels (their padding bookkeeping is on the stack)
MAX_K2 = 1024  # pairs of window levels of the k-major int16 conv (its row is on the stack)
KMAJOR_MAX_C = 16  # input channels below which the int16 conv runs along output channels
MAX_K = 4096  # window values of the k-major float conv (its row is on the stack)
DCONV_BAND = 64 << 10  # bytes of input rows the dot-product conv reads as a band on the stack (at least kh rows)


@dataclass(frozen=True)
class KernelSpec:
    family: str      # template directory under kernels/
    operands: str    # what it computes on, e.g. pm1xpm1_bits, f32, round_bits
    isa: str = "scalar"
    mr: int = 1
    nr: int = 1
    params: tuple[tuple[str, Any], ...] = ()  # template variables that select the variant

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    @property
    def name(self) -> str:
        return f"qcc_{self.family}_{self.operands}_{self.mr}x{self.nr}__{self.isa}"

    @property
    def template(self) -> str:
        return f"{self.family}/{self.isa}.c.j2"

    def variables(self) -> dict[str, Any]:
        return dict(self.params, fn=self.name, mr=self.mr, nr=self.nr)


def _k(family: str, operands: str, isa: str = "scalar", mr: int = 1, nr: int = 1, **params) -> KernelSpec:
    return KernelSpec(family, operands, isa, mr, nr, params=tuple(sorted(params.items())))


OUTS = ("f32", "bits", "i16")
EW_ISAS = ("scalar", "avx2")  # the elementwise chain's variants (one kernel per chain, rendered from its steps)
# AVX2 bit-plane GEMMs, by table lookup (popcount_avx2.c.j2) on weights stored split by blocks of
# cblock columns (render.py): from lut_min_rows rows on, blocks of up to 128 channels have their
# nibbles taken apart once per call into a stack buffer of lut_bytes (64 a row byte and 32
# channels); fewer rows, or longer ones, take the tiles that split the weights in the loop (in C,
# w1a1 3x3 convs: 16 rows 19.2 us against 21.7 with the split, 36 rows 44.3 against 45.5, 64 rows
# 7.8 against 7.3); the rows' index covers lut_nb row bytes (8 rows x 2 x lut_nb bytes of stack)
LUT = dict(lut_min_rows=64, lut_bytes=72 << 10, lut_nb=576, cblock=32)
CHUNK = 16  # AVX-512 bit-plane GEMMs: rows whose padded taps are listed at once (16 x MAX_TAPS bytes of stack)
# (input planes, weight planes) of every plane layer the lowering makes: the AVX-512 plane GEMM
# has one tile per pair of counts (render.py gives other counts the AVX2 variant)
PLANE_PAIRS = tuple((xp, wp) for xp in range(1, PLANE_BITS + 1) for wp in range(1, MAX_PLANE_PAIRS // xp + 1))

KERNELS: tuple[KernelSpec, ...] = (
    _k("transpose", "nchw2nhwc_f32", to_nhwc=True),
    _k("transpose", "nhwc2nchw_f32", to_nhwc=False),
    _k("transpose", "nchw2nhwc_f32", "avx2", mr=8, nr=8, to_nhwc=True),
    _k("transpose", "nhwc2nchw_f32", "avx2", mr=8, nr=8, to_nhwc=False),
    *(_k("quantize", f"{mode}_{out}", mode=mode, out=out)
      for mode in ("round", "sign", "ternary", "thr") for out in OUTS),
    _k("quantize", "sign_bits", "avx2", mode="sign", out="bits"),
    _k("quantize", "sign_bits_nchw", mode="sign", out="bits", nchw=True),
    _k("quantize", "sign_bits_nchw", "avx2", mr=8, nr=8, mode="sign", out="bits", nchw=True),
    _k("quantize", "round_i16_nchw", mode="round", out="i16", nchw=True),
    _k("quantize", "round_i16_nchw", "avx2", mr=8, nr=8, mode="round", out="i16", nchw=True),
    _k("quantize", "round_i16", "avx2", mode="round", out="i16"),
    _k("quantize", "round_bits", "avx2", mode="round", out="bits"),
    _k("im2col", "b64"),
    *(_k("bgemm", f"pm1xpm1_{out}", out=out, max_taps=MAX_TAPS) for out in OUTS),
    *(_k("bgemm", f"pm1xpm1_{out}", "avx2", mr=8, nr=128, out=out, max_taps=MAX_TAPS, **LUT) for out in OUTS),
    *(_k("pgemm", f"planes_{out}", out=out, max_taps=MAX_TAPS) for out in OUTS),
    *(_k("pgemm", f"planes_{out}", "avx2", mr=8, nr=128, out=out, max_taps=MAX_TAPS, **LUT) for out in OUTS),
    # x86-64 with AVX-512 VPOPCNTDQ (and F, BW, VL): the popcount GEMMs count with vpopcntq, 8
    # output channels a vector, on weights interleaved by blocks of wblock columns (render.py)
    *(_k("bgemm", f"pm1xpm1_{out}", "avx512", nr=8, out=out, max_taps=MAX_TAPS, chunk=CHUNK, wblock=8) for out in OUTS),
    *(_k("pgemm", f"planes_{out}", "avx512", nr=8, out=out, max_taps=MAX_TAPS, chunk=CHUNK, wblock=8,
         plane_pairs=PLANE_PAIRS) for out in OUTS),
    # integer convs by dot products of `group` levels u = q - lo (0 <= u <= umax) with weights of
    # wbits (render.py): AVX-512 VNNI u8 x s8 (vpdpbusd), AVX2 int16 x int16 (vpmaddwd) from min_c
    # input channels on (with fewer, CNV's RGB layer took 30.3 us against the k-major conv's 27.2)
    *(_k("dconv", f"u8s8_{out}", "avx512", mr=6, nr=32, out=out, band_bytes=DCONV_BAND, group=4, umax=255, wbits=8)
      for out in OUTS),
    *(_k("dconv", f"u15s16_{out}", "avx2", mr=6, nr=16, out=out, band_bytes=DCONV_BAND, group=2, umax=32767, wbits=16,
         min_c=KMAJOR_MAX_C)
      for out in OUTS),
    *(_k("iconv", f"i16_{out}", out=out) for out in OUTS),
    *(_k("iconv", f"i16_{out}", "avx2", nr=4, out=out) for out in OUTS),
    *(_k("ikconv", f"i16_{out}", out=out, max_k2=MAX_K2) for out in OUTS),
    *(_k("ikconv", f"i16_{out}", "avx2", nr=32, out=out, max_k2=MAX_K2) for out in OUTS),
    _k("fconv", "f32_f32"),
    _k("fkconv", "f32_f32", max_k=MAX_K),
    _k("fkconv", "f32_f32", "avx2", nr=32, max_k=MAX_K),
    _k("pool", "max_bits", kind="max", storage="bits"),
    _k("pool", "max_planes", kind="max", storage="planes"),
    _k("pool", "max_i16", kind="max", storage="i16"),
    _k("pool", "max_f32", kind="max", storage="f32"),
    _k("pool", "avg_f32", kind="avg", storage="f32"),
    _k("unpack", "bits_f32", src="bits", dst="f32"),
    _k("unpack", "bits_i16", src="bits", dst="i16"),
    _k("unpack", "i16_f32", src="i16", dst="f32"),
    _k("unpack", "bits_f32_nchw", src="bits", dst="f32", nchw=True),
    _k("unpack", "bits_f32_nchw", "avx2", mr=8, nr=8, src="bits", dst="f32", nchw=True, max_planes=PLANE_BITS),
    _k("unpack", "i16_f32_nchw", src="i16", dst="f32", nchw=True),
    _k("unpack", "i16_f32_nchw", "avx2", mr=8, nr=8, src="i16", dst="f32", nchw=True),
    *(_k("unpack", f"{src}_{dst}", "avx2", nr=8, src=src, dst=dst)
      for src, dst in (("bits", "f32"), ("bits", "i16"), ("i16", "f32"))),
    _k("softmax", "f32"),
    *(_k("ew2", f"{op}_{bcast}_f32", op=op, bcast=bcast)
      for op in ("add", "sub", "mul", "div") for bcast in ("none", "a", "b")),
    _k("mean", "f32"),
    _k("concat", "f32"),
    # aarch64 NEON (Armv8-A): packing, the plane GEMMs, the int16 and float convs
    _k("quantize", "sign_bits", "neon", mode="sign", out="bits"),
    _k("quantize", "round_i16", "neon", mode="round", out="i16"),
    _k("quantize", "round_bits", "neon", mode="round", out="bits"),
    _k("quantize", "round_i16_nchw", "neon", mr=4, nr=4, mode="round", out="i16", nchw=True),
    _k("unpack", "i16_f32_nchw", "neon", mr=4, nr=4, src="i16", dst="f32", nchw=True),
    *(_k("bgemm", f"pm1xpm1_{out}", "neon", mr=2, nr=4, out=out, max_taps=MAX_TAPS) for out in OUTS),
    *(_k("pgemm", f"planes_{out}", "neon", mr=2, nr=4, out=out, max_taps=MAX_TAPS) for out in OUTS),
    *(_k("iconv", f"i16_{out}", "neon", nr=4, out=out) for out in OUTS),
    *(_k("ikconv", f"i16_{out}", "neon", nr=32, out=out, max_k2=MAX_K2) for out in OUTS),
    _k("fkconv", "f32_f32", "neon", nr=32, max_k=MAX_K),
)


# The ISAs whose variants a CPU of each ISA runs, best first: a family without a variant for an
# ISA takes the next one's (avx512 has only the popcount GEMMs and the dot-product conv; its other
# kernels are AVX2's).
RUNS = {"scalar": ("scalar",), "avx2": ("avx2", "scalar"), "avx512": ("avx512", "avx2", "scalar"),
        "neon": ("neon", "scalar")}


def variants(family: str, operands: str | None, isa: str = "scalar", **params) -> Iterator[KernelSpec]:
    """The declared variants for (family, operands) that a CPU of ``isa`` runs, best first (RUNS);
    ``operands`` None: any, and ``params`` that the variant has those parameter values."""
    return (k for want in RUNS[isa] for k in KERNELS
            if (k.family, k.isa) == (family, want) and operands in (None, k.operands)
            and all(k.param(key) == v for key, v in params.items()))


def find(family: str, operands: str, isa: str = "scalar") -> KernelSpec:
    """The declared variant for (family, operands, isa), or that of the next ISA in RUNS[isa]."""
    k = next(variants(family, operands, isa), None)
    if k is None:
        raise KeyError(f"no kernel variant {family}/{operands}")
    return k
