#!/usr/bin/python3
"""Full-cache passkey accuracy (and held-out loss) of tiny_llm.bin in torch.

    /usr/bin/python3 eval_torch.py [--bin tiny_llm.bin] [--n 50]

Uses passkey.standard_suite (seeds/depths documented there).  Exact match is computed
with one teacher-forced forward per prompt: greedy decoding reproduces the key iff the
argmax at every answer position equals the next key digit, so this equals greedy EM.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import passkey as pk  # noqa: E402
from export import load_bin_torch  # noqa: E402


@torch.no_grad()
def suite_scores(model, n, n_digits, prompt_len):
    res = []
    for prompt, key in pk.standard_suite(n, n_digits, prompt_len):
        ids = torch.tensor([list((prompt + key).encode("ascii"))])
        logits = model(ids[:, :-1])[0]
        P = len(prompt)
        pred = logits[P - 1:P - 1 + n_digits].argmax(-1)
        c = (pred == ids[0, P:P + n_digits])
        res.append((bool(c.all()), float(c.float().mean()), P + n_digits))
    return res


@torch.no_grad()
def heldout_loss(model, path, L=1024, n=64):
    arr = np.frombuffer(open(path, "rb").read(), dtype=np.uint8)
    starts = np.linspace(0, len(arr) - L - 2, n).astype(np.int64)
    tot = 0.0
    for s in starts:
        x = torch.from_numpy(arr[s:s + L + 1].astype(np.int64))[None]
        tot += F.cross_entropy(model(x[:, :-1])[0], x[0, 1:], reduction="sum").item()
    return tot / (n * L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "tiny_llm.bin"))
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_bin_torch(args.bin)
    hl = heldout_loss(model, os.path.join(HERE, "heldout.txt"))
    print(f"held-out (heldout.txt, 64 x 1024-byte windows): {hl:.4f} nats/byte = "
          f"{hl / math.log(2):.4f} bits/byte, byte ppl {math.exp(hl):.3f}")
    rows = [(16, 1024 - 16), (64, 1024 - 64), (16, 512), (64, 512), (64, 1024)]
    for nd, pl in rows:
        r = suite_scores(model, args.n, nd, pl)
        em = sum(x[0] for x in r) / len(r)
        da = sum(x[1] for x in r) / len(r)
        fails = [i for i, x in enumerate(r) if not x[0]]
        print(f"passkey {nd:2d} digits prompt_len<= {pl:4d} (total seq <= {max(x[2] for x in r)}): "
              f"exact match {em:.3f}  digit acc {da:.4f}  failed cases {fails}")


if __name__ == "__main__":
    main()
