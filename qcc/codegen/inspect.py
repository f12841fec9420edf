"""``qcc inspect``: what each lowered kernel computes, on how many bits, at what cost."""
from __future__ import annotations

from qcc.ir.graph import Graph, Node
from qcc.ir.kernels_ref import words
from qcc.passes.plan_memory import nbytes


def _bits(t) -> str:
    if t.dtype == "bits":
        return "pm1"
    return t.quant.describe() if t.quant is not None else "f32"


def _weights(n: Node) -> tuple[str, int, int, int]:
    """(weight encoding, MACs per output pixel, bytes as compiled, bytes as fp32)."""
    a = n.attrs
    co, kh, kw, cig = a.weight.shape
    fp32 = 4 * a.weight.size
    if a.weight.dtype.kind == "i" and set(a.weight.reshape(-1).tolist()) <= {-1, 1}:
        return "pm1", co * kh * kw * cig, 8 * co * kh * kw * words(cig), fp32
    kind = "f32" if a.weight.dtype.kind == "f" else "int"
    return kind, co * kh * kw * cig, fp32, fp32


def layer_table(graph: Graph, low: Graph) -> str:
    rows = [("layer", "op", "in", "out", "x", "w", "y", "MACs", "weights", "fp32")]
    tot_mac = tot_w = tot_f = 0
    for n in low.nodes:
        if n.op == "reshape":
            continue
        x, y = low.tensors[n.inputs[0]], low.tensors[n.outputs[0]]
        wk, mac, wb, wf = "", 0, 0, 0
        if n.op == "layer":
            wk, per, wb, wf = _weights(n)
            mac = y.shape[0] * y.shape[1] * y.shape[2] * per
            op = "layer/xnor" if x.dtype == "bits" and wk == "pm1" else "layer/fconv"
        else:
            op = n.op
        tot_mac += mac
        tot_w += wb
        tot_f += wf
        rows.append((n.name[-40:], op, "x".join(map(str, x.shape)), "x".join(map(str, y.shape)),
                     _bits(x), wk or "-", _bits(y), f"{mac:,}" if mac else "-",
                     f"{wb:,}" if wb else "-", f"{wf:,}" if wf else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    acts = sum(nbytes(t) for name, t in low.tensors.items()
               if name not in low.inputs and low.meta["arena_root"].get(name) == name)
    scratch = sum(b for _, b in low.meta["scratch"].values())
    ratio = tot_f / tot_w if tot_w else 0.0
    lines += ["", f"MACs {tot_mac:,}; weights {tot_w:,} bytes compiled vs {tot_f:,} bytes fp32 ({ratio:.1f}x smaller)",
              f"arena {low.meta['arena_size']:,} bytes; without reuse: activations {acts:,} + im2col scratch {scratch:,} bytes"]
    return "\n".join(lines)
