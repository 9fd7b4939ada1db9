"""A CUDA throughput check: ResNet34 fine-tuning at 224 px and the ratings model at a large batch.

Synthetic tensors only (nothing is downloaded). Prints images/s, ratings/s and, for ResNet34, the
fraction of the card's dense bf16 peak the step uses, from the model's FLOPs counted by
``torch.utils.flop_counter`` (a training step counted as 3x the forward pass).
``python -m benchmarks.gpu_check`` (or ``bash benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from stagetune.collab.models import DotBias
from stagetune.engine.groups import param_groups, set_trainable
from stagetune.engine.optim import Optim, build_optimizer
from stagetune.vision.models import ResNet34Classifier

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendor's data sheets.
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (gradients for inputs and weights: twice the forward)


def forward_flops(model: torch.nn.Module, size: int) -> int:
    """FLOPs (2 per multiply-add) of one image's forward pass at ``size`` px."""
    counter = FlopCounterMode(display=False)
    training = model.training
    model.eval()  # one image: BatchNorm needs eval mode; the FLOPs are the same
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    model.train(training)
    return counter.get_total_flops()


def bf16_peak(device_name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, matched by name (longest name first); None when unknown."""
    for name in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if name in device_name:
            return BF16_PEAK_TFLOPS[name]
    return None


def timed(step, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls, with the GPU synchronised."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def resnet_step(batch: int, size: int, compile: bool):
    """One bf16 training step of ResNet34 (all groups trainable, channels_last) on synthetic images."""
    model = ResNet34Classifier(n_classes=37, head="fastai", weights=None, channels_last=True, compile=compile).cuda()
    groups = model.layer_groups()
    optimizer = build_optimizer(param_groups(groups, set_trainable(groups, 0, True), [1e-5, 1e-3], 0.01), Optim())
    x = torch.randn(batch, 3, size, size, device="cuda")
    y = torch.randint(0, 37, (batch,), device="cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(model(x), y)
        loss.backward()
        optimizer.step()

    return model, step


def ratings_step(batch: int, sparse: bool, n_users: int = 162_541, n_items: int = 59_047):
    """One training step of DotBias (MovieLens-25M-sized tables) on a synthetic batch.

    Dense: AdamW over both whole tables. Sparse (``model.sparse=true``): LazyAdam over the rows used.
    """
    model = DotBias(n_users=n_users, n_items=n_items, n_factors=50, y_range=[0.0, 5.5], sparse=sparse).cuda()
    groups = [{"params": list(model.parameters()), "lr": 1e-2, "wd": 0.1}]
    optimizer = build_optimizer(groups, Optim(), sparse=sparse)
    users = torch.randint(0, n_users, (batch,), device="cuda")
    items = torch.randint(0, n_items, (batch,), device="cuda")
    ratings = torch.rand(batch, device="cuda") * 4 + 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(users, items), ratings).backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__)
    parser.add_argument("--batch", type=int, default=128, help="ResNet34 images per step")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ratings-batch", type=int, default=65_536)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not in the built-in list")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or bf16_peak(name)
    rows = []
    per_image = None
    for compile in (False, True):
        model, step = resnet_step(args.batch, args.size, compile)
        per_image = per_image or forward_flops(model, args.size)  # counted on the eager model
        seconds = timed(step, 10 if compile else 5, args.steps)
        flops = TRAIN_FLOPS_PER_FORWARD * per_image * args.batch / seconds
        used = f"{flops / (peak * 1e12):.1%}" if peak else "peak unknown"
        label = f"ResNet34 {args.size}px bf16 channels_last{' compile' if compile else ''}, batch {args.batch}"
        rows.append((label, f"{args.batch / seconds:,.0f} images/s", f"{flops / 1e12:.1f} TFLOP/s", used))
        del model, step
        torch.cuda.empty_cache()
    for sparse in (False, True):
        seconds = timed(ratings_step(args.ratings_batch, sparse), 5, args.steps)
        label = f"DotBias (162k users, 59k items){' sparse, LazyAdam' if sparse else ''}, batch {args.ratings_batch:,}"
        rows.append((label, f"{args.ratings_batch / seconds:,.0f} ratings/s", "-", "memory-bound"))
    print(f"device: {name}; bf16 peak {peak or 'unknown'} TFLOP/s; torch {torch.__version__}")
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    header = ("run", "throughput", "achieved", "of bf16 peak")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    for row in (header, *rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
