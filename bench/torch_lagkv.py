#!/usr/bin/env python3
"""The LagKV scoring formula as tensor code in torch (the way the authors' implementation
computes it: [H, chunks, lag, D] views, per-channel min/max of the next chunk, std over
channels, softmax within the chunk, K and V, in the cache's dtype), timed on bench_score's
shape with one thread: the "x torch" baseline of bench/RESULTS.md.

Run with Debian's interpreter, which has python3-torch:  /usr/bin/python3 bench/torch_lagkv.py
"""
import time

import torch

H, S, D, LAG = 8, 32768, 128, 128


def chunk_probs(x: torch.Tensor, lag: int) -> torch.Tensor:
    h, s, d = x.shape
    n = s // lag
    chunks = x[:, : n * lag].reshape(h, n, lag, d)
    ref, cur = chunks[:, 1:], chunks[:, :-1]
    lo = ref.amin(dim=2, keepdim=True)
    hi = ref.amax(dim=2, keepdim=True)
    return ((cur - lo) / (hi - lo)).std(dim=-1).softmax(dim=-1)


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        k = torch.randn(H, S, D, generator=gen).to(dtype)
        v = torch.randn(H, S, D, generator=gen).to(dtype)
        nbytes = 2 * k.numel() * k.element_size()
        try:
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                p = chunk_probs(k, LAG) + chunk_probs(v, LAG)
                best = min(best, time.perf_counter() - t0)
            print(f"{str(dtype):15s} H{H} S{S} D{D} lag{LAG}: {nbytes / best / 1e9:.3f} GB/s "
                  f"({best:.2f} s, checksum {float(p.float().sum()):.1f})")
        except RuntimeError as e:  # e.g. an op without a CPU kernel for this dtype
            print(f"{str(dtype):15s} not supported: {str(e).splitlines()[0]}")


if __name__ == "__main__":
    main()
