#!/usr/bin/python3
"""Write / read tiny_llm.bin (format: FORMAT.md).

    /usr/bin/python3 export.py [--ckpt ckpt.pt] [--out tiny_llm.bin]

read_bin() returns (config dict, list of (name, float32 numpy array)) using only numpy;
load_bin_torch() builds the torch TinyLlama from the .bin file.
"""
import argparse
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"TLLM"
VERSION = 1
HEADER_BYTES = 64
INT_FIELDS = ["n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab", "max_ctx"]


def tensor_layout(c):
    """Fixed tensor order: list of (name, shape).  Shapes are row-major [rows, cols]."""
    d, hd = c["d_model"], c["head_dim"]
    out = [("embed.weight", (c["vocab"], d))]
    for l in range(c["n_layers"]):
        p = f"layers.{l}."
        out += [(p + "attn_norm.weight", (d,)),
                (p + "attn.wq.weight", (c["n_heads"] * hd, d)),
                (p + "attn.wk.weight", (c["n_kv_heads"] * hd, d)),
                (p + "attn.wv.weight", (c["n_kv_heads"] * hd, d)),
                (p + "attn.wo.weight", (d, c["n_heads"] * hd)),
                (p + "ffn_norm.weight", (d,)),
                (p + "mlp.w_gate.weight", (c["ffn_dim"], d)),
                (p + "mlp.w_up.weight", (c["ffn_dim"], d)),
                (p + "mlp.w_down.weight", (d, c["ffn_dim"]))]
    out.append(("norm.weight", (d,)))
    return out


def write_bin(config, state, path):
    hdr = MAGIC + struct.pack("<I", VERSION)
    hdr += struct.pack("<8i", *[int(config[k]) for k in INT_FIELDS])
    hdr += struct.pack("<2f", float(config["rope_base"]), float(config["rms_eps"]))
    hdr += struct.pack("<2I", 1, 1)  # flags: bit0 = tied embeddings; dtype 1 = fp16
    hdr += b"\0" * (HEADER_BYTES - len(hdr))
    assert len(hdr) == HEADER_BYTES
    with open(path + ".tmp", "wb") as f:
        f.write(hdr)
        for name, shape in tensor_layout(config):
            t = state[name]
            a = t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)
            assert tuple(a.shape) == tuple(shape), (name, a.shape, shape)
            f.write(np.ascontiguousarray(a).astype("<f2").tobytes())
    os.replace(path + ".tmp", path)


def read_bin(path):
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:4] == MAGIC, "bad magic"
    (ver,) = struct.unpack_from("<I", buf, 4)
    assert ver == VERSION, f"unsupported version {ver}"
    ints = struct.unpack_from("<8i", buf, 8)
    rope_base, rms_eps = struct.unpack_from("<2f", buf, 40)
    flags, dtype = struct.unpack_from("<2I", buf, 48)
    assert flags == 1 and dtype == 1
    c = dict(zip(INT_FIELDS, ints))
    c["rope_base"] = float(rope_base)
    c["rms_eps"] = float(rms_eps)
    off = HEADER_BYTES
    tensors = []
    for name, shape in tensor_layout(c):
        n = int(np.prod(shape))
        a = np.frombuffer(buf, dtype="<f2", count=n, offset=off).astype(np.float32).reshape(shape)
        off += 2 * n
        tensors.append((name, a))
    assert off == len(buf), f"size mismatch: parsed {off} bytes, file has {len(buf)}"
    return c, tensors


def load_bin_torch(path):
    import torch
    sys.path.insert(0, HERE)
    from model import Config, TinyLlama
    c, tensors = read_bin(path)
    model = TinyLlama(Config(**c))
    sd = {k: torch.from_numpy(v.copy()) for k, v in tensors}
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "ckpt.pt"))
    ap.add_argument("--out", default=os.path.join(HERE, "tiny_llm.bin"))
    args = ap.parse_args()
    import torch
    ck = torch.load(args.ckpt, map_location="cpu")
    write_bin(ck["config"], ck["model"], args.out)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes (step {ck.get('step')}, tokens {ck.get('tokens')})")
    assert size <= 8 * 1024 * 1024
    c, _ = read_bin(args.out)
    print("config", c)


if __name__ == "__main__":
    main()
