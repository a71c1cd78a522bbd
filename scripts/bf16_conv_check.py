"""Is the CPU's bf16 autocast weight gradient of a strided conv right where its input has a side
of 1? Compares it with FP32 for a few shapes, without and with quantdet's guard
(quantdet.train.device.Fp32StridedConvOnLines, on in every training loop under CPU autocast).

    python scripts/bf16_conv_check.py

Prints one line per case: relative error of the weight gradient against FP32 (bf16 rounding
alone gives ~0.01; NaN/inf or > 0.05 is a wrong gradient)."""
import torch

from quantdet.train.device import Fp32StridedConvOnLines


def relative_error(channels: int, size: tuple[int, int], stride: int, guard: bool, seed: int) -> float:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(channels, channels, 3, stride, 1)
    x = torch.relu(torch.randn(16, channels, *size)).contiguous(memory_format=torch.channels_last)
    with Fp32StridedConvOnLines(conv, guard), torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    grad = torch.randn(y.shape)
    y.float().backward(grad)
    bf16 = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(x).backward(grad)
    return float((bf16 - conv.weight.grad).norm() / conv.weight.grad.norm())


def main() -> None:
    print(f"torch {torch.__version__}")
    print("channels  input  stride  seed  unguarded  guarded")
    for channels in (32, 64, 128, 256):
        for size in ((1, 1), (4, 1), (2, 2)):
            for seed in range(3):
                plain = relative_error(channels, size, 2, False, seed)
                guarded = relative_error(channels, size, 2, True, seed)
                print(f"{channels:8d}  {size[0]}x{size[1]}      2  {seed:4d}  {plain:9.3g}  {guarded:7.3g}")


if __name__ == "__main__":
    main()
