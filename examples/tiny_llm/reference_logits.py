#!/usr/bin/python3
"""Reference fp32 logits for the C++ engine test, computed from tiny_llm.bin ONLY.

    /usr/bin/python3 reference_logits.py [--bin tiny_llm.bin]

The forward pass below is a direct numpy transcription of FORMAT.md (independent of
model.py / torch), so agreement between this file, the torch model and the C++ engine
shows that tiny_llm.bin + FORMAT.md are sufficient.

Outputs (in this directory):
  ref_prompt.txt   the prompt bytes, no trailing newline (ASCII; 1 byte = 1 token)
                   = REF_TEXT repeated and cut to exactly 200 bytes
                     + passkey.make_prompt(seed=12345, n_digits=16, depth=0.5, prompt_len=600)
  ref_logits.npy   float32, shape [len(REF_POSITIONS), 256]: row i = logits predicting the
                   byte at position REF_POSITIONS[i] + 1, i.e. the output at position
                   REF_POSITIONS[i] of a full-prompt forward pass (positions 0-based;
                   the last row is the last prompt position).
  ref_greedy.txt   the 24 bytes produced by greedy (argmax) decoding after the prompt
                   (full cache); begins with the 16-digit key if the model is right.
"""
import argparse
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import passkey as pk  # noqa: E402
from export import read_bin  # noqa: E402  (numpy-only parser)

REF_TEXT = "The quick brown fox jumps over the lazy dog. "
N_GREEDY = 24


def ref_prompt():
    a = (REF_TEXT * 10)[:200]
    b, key = pk.make_prompt(12345, 16, 0.5, 600)
    return a + b, key


def forward(c, W, ids):
    """ids: list of ints -> logits float32 [T, vocab]; float32 arithmetic throughout."""
    T = len(ids)
    d, nh, nkv, hd = c["d_model"], c["n_heads"], c["n_kv_heads"], c["head_dim"]
    eps = np.float32(c["rms_eps"])
    half = hd // 2
    inv = np.array([c["rope_base"] ** (-2.0 * i / hd) for i in range(half)], dtype=np.float64)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x):  # x [T, hd]
        x1, x2 = x[:, :half], x[:, half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=1)

    E = W["embed.weight"]
    x = E[np.asarray(ids)].astype(np.float32)
    causal = np.triu(np.ones((T, T), dtype=bool), 1)
    for l in range(c["n_layers"]):
        p = f"layers.{l}."
        a = rms(x, W[p + "attn_norm.weight"])
        q = a @ W[p + "attn.wq.weight"].T   # [T, nh*hd]
        k = a @ W[p + "attn.wk.weight"].T   # [T, nkv*hd]
        v = a @ W[p + "attn.wv.weight"].T
        heads = []
        for h in range(nh):
            j = h // (nh // nkv)
            qh = rope(q[:, h * hd:(h + 1) * hd])
            kh = rope(k[:, j * hd:(j + 1) * hd])
            vh = v[:, j * hd:(j + 1) * hd]
            s = (qh @ kh.T) * np.float32(1.0 / math.sqrt(hd))
            s[causal] = -np.inf
            s = s - s.max(-1, keepdims=True)
            e = np.exp(s)
            heads.append((e / e.sum(-1, keepdims=True)) @ vh)
        x = x + np.concatenate(heads, axis=1) @ W[p + "attn.wo.weight"].T
        a = rms(x, W[p + "ffn_norm.weight"])
        g = a @ W[p + "mlp.w_gate.weight"].T
        u = a @ W[p + "mlp.w_up.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ W[p + "mlp.w_down.weight"].T
    x = rms(x, W["norm.weight"])
    return (x @ E.T).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "tiny_llm.bin"))
    ap.add_argument("--outdir", default=HERE)
    args = ap.parse_args()
    c, tensors = read_bin(args.bin)
    W = dict(tensors)
    prompt, key = ref_prompt()
    ids = list(prompt.encode("ascii"))
    T = len(ids)
    positions = [0, 1, 100, 199, 200, 500, T - 2, T - 1]
    logits = forward(c, W, ids)
    ref = logits[positions]
    with open(os.path.join(args.outdir, "ref_prompt.txt"), "wb") as f:
        f.write(prompt.encode("ascii"))
    np.save(os.path.join(args.outdir, "ref_logits.npy"), ref.astype(np.float32))
    out = []
    cur = list(ids)
    nxt = int(np.argmax(logits[-1]))
    for _ in range(N_GREEDY):
        out.append(nxt)
        cur.append(nxt)
        nxt = int(np.argmax(forward(c, W, cur)[-1]))
    greedy = bytes(out).decode("latin-1")
    with open(os.path.join(args.outdir, "ref_greedy.txt"), "wb") as f:
        f.write(bytes(out))
    print(f"prompt {T} bytes, positions {positions}; key {key}; greedy {greedy!r}")
    print("last-position top-5:", np.argsort(-ref[-1])[:5].tolist(), ref[-1][np.argsort(-ref[-1])[:5]])
    # cross-check against the torch implementation loaded from the same .bin
    try:
        import torch
        from export import load_bin_torch
        m = load_bin_torch(args.bin)
        with torch.no_grad():
            tl = m(torch.tensor([ids]))[0].numpy()
        print("max |numpy - torch| over all positions:", float(np.abs(tl - logits).max()))
    except ImportError:
        pass


if __name__ == "__main__":
    main()
