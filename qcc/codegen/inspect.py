"""``qcc inspect``: what each lowered kernel computes, on how many bits, at what cost."""
from __future__ import annotations

from dataclasses import dataclass

from qcc.ir.graph import Graph, Node, Tensor
from qcc.ir.kernels_ref import plane_words
from qcc.passes.plan_memory import nbytes


def encoding(t: Tensor) -> str:
    """pm1, u2, i8 ... for levels (with their storage), f32 for values."""
    if t.quant is None:
        return "f32"
    return t.quant.describe() + ("" if t.dtype == "bits" else f"/{t.dtype}")


@dataclass(frozen=True)
class LayerInfo:
    """What one lowered ``layer`` computes and stores."""

    kind: str          # xnor | planes | int16 | float
    weights: str       # the weights' encoding (pm1, i2, i8 ..., f32)
    pairs: int         # plane pairs (0 off the bit-plane kernels)
    macs: int
    # as compiled for scalar, avx2, neon (avx512 keeps bit rows unpadded in blocks of 8 channels, int8 weights as bytes)
    weight_bytes: int
    fp32_bytes: int    # the same weights in fp32

    @property
    def bit_macs(self) -> int:
        """Bit-level multiply-accumulates: MACs x plane pairs (0 off the bit-plane kernels)."""
        return self.macs * self.pairs


def layer_info(n: Node, tensors: dict[str, Tensor]) -> LayerInfo:
    a = n.attrs
    x, y = tensors[n.inputs[0]], tensors[n.outputs[0]]
    co, kh, kw, cig = a.weight.shape
    macs = y.shape[0] * y.shape[1] * y.shape[2] * co * kh * kw * cig
    fp32 = 4 * a.weight.size
    if a.w_spec is None:
        return LayerInfo("float", "f32", 0, macs, fp32, fp32)
    if x.dtype == "bits":
        kind = "xnor" if a.x_spec.bipolar and a.w_spec.bipolar else "planes"
        stored = 8 * co * a.w_spec.bits * plane_words(kh * kw, cig)
        return LayerInfo(kind, a.w_spec.describe(), a.x_spec.bits * a.w_spec.bits, macs, stored, fp32)
    return LayerInfo("int16", a.w_spec.describe(), 0, macs, 2 * a.weight.size, fp32)


def total_macs(low: Graph) -> int:
    return sum(layer_info(n, low.tensors).macs for n in low.nodes if n.op == "layer")


def layer_table(graph: Graph, low: Graph, unpruned: Graph | None = None) -> str:
    """The table; ``unpruned`` (the same model lowered without dead-channel removal) adds
    the channel counts and MACs before removal."""
    rows = [("node", "kernel", "in", "out", "x", "w", "pairs", "y", "MACs", "weights", "fp32")]
    tot_mac = tot_w = tot_f = 0
    for n in low.nodes:
        if n.op == "reshape":
            continue
        x, y = low.tensors[n.inputs[0]], low.tensors[n.outputs[0]]
        wk, pairs, mac, wb, wf, op = "-", "-", 0, 0, 0, n.op
        if n.op == "layer":
            info = layer_info(n, low.tensors)
            op, wk, mac, wb, wf = f"layer/{info.kind}", info.weights, info.macs, info.weight_bytes, info.fp32_bytes
            pairs = str(info.pairs) if info.pairs else "-"
        tot_mac += mac
        tot_w += wb
        tot_f += wf
        rows.append((n.name[-40:], op, "x".join(map(str, x.shape)), "x".join(map(str, y.shape)),
                     encoding(x), wk, pairs, encoding(y), f"{mac:,}" if mac else "-",
                     f"{wb:,}" if wb else "-", f"{wf:,}" if wf else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    acts = sum(nbytes(t) for name, t in low.tensors.items()
               if name not in low.inputs and low.meta["arena_root"].get(name) == name)
    scratch = sum(b for _, b in low.meta["scratch"].values())
    ratio = tot_f / tot_w if tot_w else 0.0
    lines += ["", f"MACs {tot_mac:,}; weights {tot_w:,} bytes compiled vs {tot_f:,} bytes fp32 ({ratio:.1f}x smaller)",
              f"arena {low.meta['arena_size']:,} bytes; without reuse: activations {acts:,} + im2col scratch {scratch:,} bytes"]
    for name, (before, after) in low.meta.get("dead_channels", {}).items():
        lines.append(f"dead channels removed: {name}: {before} -> {after} output channels")
    if unpruned is not None:
        was = total_macs(unpruned)
        lines.append(f"MACs without dead-channel removal: {was:,} ({tot_mac / was:.1%} kept)")
    return "\n".join(lines)
