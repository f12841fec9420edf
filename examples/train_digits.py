#!/usr/bin/env python3
# Regenerate the committed models (run from the repository root; each run also
# rewrites examples/models/digits_inputs.npz only if its content would change):
#   python examples/train_digits.py --bits w1a1 --epochs 40 --out examples/models/digits_w1a1.onnx
#   python examples/train_digits.py --bits w1a2 --epochs 40 --out examples/models/digits_w1a2.onnx
#   python examples/train_digits.py --bits w2a2 --epochs 40 --out examples/models/digits_w2a2.onnx
"""Train a small binarized CNN on scikit-learn's 8x8 digits and export it as QONNX.

This script produces the reference models that qcc compiles in its examples and
tests.  It is *not* needed at qcc run time and is the only place that imports
torch, Brevitas and scikit-learn.

Data
    ``sklearn.datasets.load_digits()`` (1797 images of 8x8 pixels with values
    0..16, shipped inside scikit-learn, no download).  Pixels are divided by 16
    so inputs are float32 in [0, 1], shaped ``N,1,8,8``.  The split is fixed:
    the first 1500 samples train, the last 297 test.

Network (``w1a1``: binary weights and activations, 8-bit first and last layer,
the usual FINN / BNN-PYNQ layout)::

    QuantIdentity   uint8, constant scale 2**-7       (input quantizer)
    QuantConv2d     1->16, 3x3, pad 1, int8 weights, no bias
    BatchNorm2d, binary act
    QuantConv2d     16->32, 3x3, pad 1, binary weights, no bias
    BatchNorm2d, binary act, MaxPool2d(2)             (8x8 -> 4x4)
    QuantConv2d     32->64, 3x3, pad 1, binary weights, no bias
    BatchNorm2d, binary act, MaxPool2d(2)             (4x4 -> 2x2)
    Flatten
    QuantLinear     256->64, binary weights, no bias
    BatchNorm1d, binary act
    QuantLinear     64->10, int8 weights, float bias  (logits, no output quant)

"binary" means values in {-1, +1} with a constant scale of 1.0: Brevitas exports
such quantizers as QONNX ``BipolarQuant`` nodes.  The input scale 2**-7 is
chosen so that every digits pixel (k/16, k = 0..16) is exactly representable
as an unsigned 8-bit integer (8*k), so the input quantizer never rounds and no
rounding ties can arise in a compiled model.

The hidden-layer quantizers come from the ``QUANT_CONFIGS`` table keyed by
``--bits``.  ``w1a1`` is the main configuration.  The two wider ones replace
every "BatchNorm, binary act" (including the one after the first conv) by
"BatchNorm, ``QuantReLU``" with a 2-bit *unsigned* activation quantizer whose
per-tensor float scale is learned (initialised from a percentile of the
activations, HWGQ style); it exports as ``Relu -> Quant(signed=0, bitwidth=2)``:

``w1a2``  binary weights (as in ``w1a1``), 2-bit unsigned activations {0..3}*s
``w2a2``  2-bit signed *non-narrow* weights {-2, -1, 0, 1}*s with a learned
          per-output-channel scale (``Quant(signed=1, narrow=0, bitwidth=2)``),
          2-bit unsigned activations

Outputs
    ``--out``      the QONNX model (default ``examples/models/digits_<bits>.onnx``)
    ``--inputs``   an ``.npz`` with ``x`` (the first 200 test images, float32
                   ``N,1,8,8``) and ``y`` (their int64 labels), so that tests can
                   run without torch or scikit-learn.

Usage::

    python examples/train_digits.py --bits w1a1 --epochs 40 \\
        --out examples/models/digits_w1a1.onnx

Requirements: torch, brevitas, onnx, onnxoptimizer, scikit-learn.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import brevitas.nn as qnn  # noqa: E402
from brevitas.core.scaling import ScalingImplType  # noqa: E402
from brevitas.quant import (  # noqa: E402
    Int8WeightPerChannelFloat,
    Int8WeightPerTensorFloat,
    SignedBinaryActPerTensorConst,
    SignedBinaryWeightPerTensorConst,
    Uint8ActPerTensorFloat,
)
from brevitas.quant.base import UintQuant  # noqa: E402
from brevitas.quant.base import PerTensorFloatScaling8bit  # noqa: E402
from brevitas.quant.solver import ActQuantSolver  # noqa: E402

N_TRAIN = 1500          # first N_TRAIN samples train, the remaining 297 test
N_SAVED_INPUTS = 200    # test images saved to the .npz for torch-free tests


# --------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------

class InputQuant(UintQuant, PerTensorFloatScaling8bit, ActQuantSolver):
    """Unsigned 8-bit input quantizer with a constant scale of 2**-7.

    With constant scaling Brevitas takes the threshold from ``max_val`` and
    divides it by the largest unsigned 8-bit integer (255), so
    ``max_val = 255 / 128`` gives ``scale = 1 / 128`` exactly.  The
    representable range is [0, 255/128], which covers the inputs in [0, 1].
    """
    scaling_impl_type = ScalingImplType.CONST
    max_val = 255.0 / 128.0


class BinaryWeightQuant(SignedBinaryWeightPerTensorConst):
    """Binary weights in {-1, +1} (Brevitas' default constant scale is 0.1)."""
    scaling_const = 1.0


class BinaryActQuant(SignedBinaryActPerTensorConst):
    """Binary activations in {-1, +1}: sign(x), with sign(0) = +1."""


class Uint2ActQuant(Uint8ActPerTensorFloat):
    """Unsigned 2-bit activations {0, 1, 2, 3} * s for use in ``QuantReLU``.

    ``s`` is a learned per-tensor float parameter, initialised from the
    99.999th percentile of the ReLU output over the first training steps.
    """
    bit_width = 2
    collect_stats_steps = 100


class Int2WeightQuant(Int8WeightPerChannelFloat):
    """Non-narrow signed 2-bit weights {-2, -1, 0, 1} * s[c], per output channel.

    The scale is a learned parameter initialised from max |w| of each output
    channel.  With a plain max-based scale the level -2 could never be reached
    (|w| / max|w| <= 1 rounds to at most 1); learning the scale lets it shrink
    below max|w| / 1.5 so that the most negative weights use -2.
    """
    bit_width = 2
    narrow_range = False
    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS


@dataclass(frozen=True)
class QuantConfig:
    """Quantizers for the hidden (binarizable) part of the network.

    The first conv and the last linear layer always use 8-bit weights and the
    input always uses ``InputQuant``; only the hidden layers change.
    """
    weight_quant: Any   # Brevitas weight quantizer for hidden conv/linear
    act_quant: Any      # Brevitas activation quantizer after each BatchNorm
    lr: float = 1e-2
    relu: bool = False  # True: QuantReLU(act_quant) instead of QuantIdentity(act_quant)


QUANT_CONFIGS: dict[str, QuantConfig] = {
    "w1a1": QuantConfig(weight_quant=BinaryWeightQuant, act_quant=BinaryActQuant),
    "w1a2": QuantConfig(weight_quant=BinaryWeightQuant, act_quant=Uint2ActQuant, relu=True),
    "w2a2": QuantConfig(weight_quant=Int2WeightQuant, act_quant=Uint2ActQuant, relu=True),
}


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

class DigitsBNN(nn.Module):
    """The binarized CNN described in the module docstring."""

    def __init__(self, cfg: QuantConfig):
        super().__init__()

        def act() -> nn.Module:
            if cfg.relu:
                return qnn.QuantReLU(act_quant=cfg.act_quant, return_quant_tensor=True)
            return qnn.QuantIdentity(act_quant=cfg.act_quant, return_quant_tensor=True)

        def conv(cin: int, cout: int, **kw: Any) -> nn.Module:
            kw.setdefault("weight_quant", cfg.weight_quant)
            return qnn.QuantConv2d(cin, cout, kernel_size=3, padding=1, bias=False, **kw)

        self.features = nn.Sequential(
            qnn.QuantIdentity(act_quant=InputQuant, return_quant_tensor=True),
            conv(1, 16, weight_quant=Int8WeightPerTensorFloat),
            nn.BatchNorm2d(16),
            act(),
            conv(16, 32),
            nn.BatchNorm2d(32),
            act(),
            nn.MaxPool2d(2),
            conv(32, 64),
            nn.BatchNorm2d(64),
            act(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            qnn.QuantLinear(64 * 2 * 2, 64, bias=False, weight_quant=cfg.weight_quant),
            nn.BatchNorm1d(64),
            act(),
            qnn.QuantLinear(64, 10, bias=True, weight_quant=Int8WeightPerTensorFloat),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.features(x))
        # The last QuantLinear has no output quantizer, so this is a plain
        # tensor; unwrap defensively in case a QuantTensor comes through.
        return out.value if hasattr(out, "value") else out


# --------------------------------------------------------------------------
# Data, training, evaluation
# --------------------------------------------------------------------------

def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``x_train, y_train, x_test, y_test`` (float32 N,1,8,8 in [0,1]; int64)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(dim=1)
    return (pred == y).float().mean().item()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
          batch_size: int, lr: float, seed: int) -> None:
    """Adam with cosine learning-rate decay; shuffling uses its own seeded generator."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        sched.step()
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1:3d}/{epochs}  loss {total / n:.4f}", flush=True)


def export(model: nn.Module, path: Path) -> None:
    """Export to QONNX with a dynamic batch dimension."""
    from brevitas.export import export_qonnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    export_qonnx(
        model,
        torch.zeros(1, 1, 8, 8),
        export_path=str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        # Brevitas' custom symbolic functions need the TorchScript exporter.
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", choices=sorted(QUANT_CONFIGS), default="w1a1",
                    help="quantization of the hidden layers (default: w1a1)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate (default: per --bits config)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None,
                    help="QONNX output (default: examples/models/digits_<bits>.onnx)")
    ap.add_argument("--inputs", type=Path, default=None,
                    help="npz of test inputs (default: digits_inputs.npz beside --out)")
    args = ap.parse_args(argv)

    here = Path(__file__).resolve().parent
    out = args.out or here / "models" / f"digits_{args.bits}.onnx"
    inputs_path = args.inputs or out.parent / "digits_inputs.npz"
    cfg = QUANT_CONFIGS[args.bits]

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    x_tr, y_tr, x_te, y_te = load_data()
    xt_tr, yt_tr = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    xt_te, yt_te = torch.from_numpy(x_te), torch.from_numpy(y_te)
    print(f"data: train {tuple(x_tr.shape)}, test {tuple(x_te.shape)}")

    model = DigitsBNN(cfg)
    t0 = time.time()
    train(model, xt_tr, yt_tr, epochs=args.epochs, batch_size=args.batch_size,
          lr=args.lr if args.lr is not None else cfg.lr, seed=args.seed)
    print(f"training took {time.time() - t0:.1f}s")

    acc_tr = accuracy(model, xt_tr, yt_tr)
    acc_te = accuracy(model, xt_te, yt_te)
    print(f"{args.bits}: train accuracy {acc_tr:.4f}, test accuracy {acc_te:.4f}")

    export(model, out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")

    save_inputs(inputs_path, x_te[:N_SAVED_INPUTS].copy(), y_te[:N_SAVED_INPUTS].copy())
    return 0


def save_inputs(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write the test-input ``.npz`` unless ``path`` already holds exactly these arrays.

    ``np.savez`` stamps the current time into the zip, so rewriting an unchanged
    file would still change its bytes.
    """
    if path.exists():
        with np.load(path) as old:
            same = (sorted(old.files) == ["x", "y"]
                    and all(old[k].dtype == v.dtype and old[k].shape == v.shape
                            and np.array_equal(old[k], v) for k, v in (("x", x), ("y", y))))
        if same:
            print(f"kept {path} (unchanged)")
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
