"""PyTorch's time for ResNet-20's layers one at a time, to set beside `cnncli bench resnet20`
(which times cnncli's the same way: batch 64, per layer, forward and backward).

    .venv/bin/python bench/bench_torch_layers.py [--threads 1] [--calls 20]

channels_last (PyTorch's faster layout for these nets), float32: a bias-free 3x3 pad-1
convolution and a training-mode BatchNorm2d followed by ReLU, at each stage's size (32x32x16,
16x16x32, 8x8x64). "forward" runs under `no_grad`; "forward + backward" is a forward with
autograd and the backward of a fixed upstream gradient (dx and the parameters' gradients).
Medians of `--calls` calls, in ms.
"""

from __future__ import annotations

import argparse
from statistics import median

from bench_threads import timed as per_call

STAGES = [(32, 16), (16, 32), (8, 64)]  # (H = W, channels)


def timed(call, calls: int) -> float:
    """Median ms of `calls` calls after one untimed call (bench_threads.py's stopwatch)."""
    return median(per_call(call, calls))


def stage(h: int, c: int, batch: int, calls: int) -> list[str]:
    """The table's two rows for one stage's size."""
    import torch

    cl = torch.channels_last
    x = torch.randn(batch, c, h, h).contiguous(memory_format=cl).requires_grad_(True)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=cl)
    bn = torch.nn.BatchNorm2d(c)
    g = torch.randn(batch, c, h, h).contiguous(memory_format=cl)
    z = conv(x).detach().requires_grad_(True)

    def conv_fwd() -> None:
        with torch.no_grad():
            conv(x)

    def conv_both() -> None:
        x.grad = conv.weight.grad = None
        conv(x).backward(g)

    def bn_fwd() -> None:
        with torch.no_grad():
            torch.relu(bn(z))

    def bn_both() -> None:
        z.grad = bn.weight.grad = bn.bias.grad = None
        torch.relu(bn(z)).backward(g)

    size = f"{h}x{h}x{c}"
    return [f"| conv 3x3 {c}->{c} | {size} | {timed(conv_fwd, calls):.2f} | "
            f"{timed(conv_both, calls):.2f} |",
            f"| batchnorm + relu | {size} | {timed(bn_fwd, calls):.2f} | "
            f"{timed(bn_both, calls):.2f} |"]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__}, {a.threads} thread{'s' if a.threads > 1 else ''}, "
          f"batch {a.batch}, channels_last, float32, medians of {a.calls} calls, ms\n")
    print("| layer | output | forward | forward + backward |")
    print("|---|---|---:|---:|")
    for h, c in STAGES:
        print("\n".join(stage(h, c, a.batch, a.calls)))


if __name__ == "__main__":
    main()
