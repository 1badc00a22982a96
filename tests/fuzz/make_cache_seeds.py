#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/cache (the fuzzer grows the rest).

Each seed is a program in the byte format decoded by tests/support/cache_fuzz.hpp: a 32-byte
header (dtype, SIMD target, shape, memory layout, policy) and a list of operations. The seeds
cover every dtype x memory layout x policy with a schedule that actually compresses, plus
sequences aimed at the error paths (invalid inputs, capacity overflow, set_policy/clear,
commit, moves). Usage: python3 tests/fuzz/make_cache_seeds.py tests/fuzz/corpus/cache
"""
import itertools
import os
import sys

# Table indices (see decode_policy / program::construct).
KIND = {"none": 0, "lagkv": 1, "l2norm": 2, "l2norm-chunked": 3, "h2o": 4, "streaming": 5, "random": 6}
SINK = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
LAG = {2: 0, 3: 1, 4: 2, 5: 3, 6: 4, 8: 6}
RATIO = {0.5: 0, 0.25: 1, 0.75: 2, 1.0: 3, 0.34: 5}
SVR = {1.0: 0, 0.0: 1, 0.5: 2}
WINDOW = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
INTERVAL = {1: 0, 2: 1, 3: 2}
MINS = {0: 0, 2: 2, 4: 4}
HEAD_DIM = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7, 16: 12, 17: 13, 33: 14}
TOKENS = {1: 0, 2: 5, 3: 6, 4: 7, 5: 8, 7: 9, 8: 10, 11: 11, 16: 12, 24: 13, 0: 14, -1: 15}
MEM = {"owned": 0, "hsd": 2, "shd": 3, "llama": 4, "hds": 5, "paged": 6, "mixed": 7}


def policy(kind, sink=2, lag=4, ratio=0.5, svr=1.0, budget=0, window=2, interval=1, seed=3, share=False,
           reduce=0, min_per_head=0):
    budget_byte = 0 if budget == 0 else budget + 1  # 2..41 -> 1..40; 0 -> unset
    flags = (1 if share else 0) | (reduce << 1)
    return bytes([KIND[kind], SINK[sink], LAG[lag], RATIO[ratio], SVR[svr], budget_byte, WINDOW[window],
                  INTERVAL[interval], seed, flags, MINS[min_per_head], 0])


def header(dtype, layers=2, heads=2, head_dim=4, capacity=48, mem="owned", pol=None, target=0, auto=True,
           block=3, spare=2, mixed=(0b1101, 0b0110, 0b1011)):
    h = bytearray(32)
    h[0], h[1], h[2], h[3], h[4] = dtype, target, layers - 1, heads - 1, HEAD_DIM[head_dim]
    h[5] = capacity - 1
    h[6] = 0 if auto else 1
    h[9] = MEM[mem]
    h[10:13] = bytes(mixed)
    h[13] = block - 1
    h[14] = spare
    h[16:28] = pol if pol is not None else policy("lagkv")
    return bytes(h)


def extras(mode=0, group=1, vmode=0, seed=1):
    # mode: 0 queries, 4 probs, 5 prob_sums, 6 none, 7 queries+probs
    return bytes([mode | ((group - 1) << 3) | (vmode << 5), 0, seed])


def append(layer, tokens, layout=0, dmode=0, seed=1, ex=None, bad=0):
    return bytes([0, layer, TOKENS[tokens], layout, bad, dmode, seed & 255, seed >> 8]) + (ex or extras())


def burst(layer, count, dmode=0, seed=1, ex=None):
    return bytes([13, layer, count - 1, dmode, seed & 255, seed >> 8]) + (ex or extras())


def commit(layer, tokens, write=3, dmode=0, seed=1, ex=None):
    return bytes([4, layer, TOKENS[tokens], write, dmode, seed & 255, seed >> 8]) + (ex or extras())


def compress(layer):
    return bytes([5, layer])


COMPRESS_ALL = bytes([6])
MOVE = bytes([12, 1])


def clear(layer=None):
    return bytes([7, 0x80 if layer is None else layer])


def set_policy(layer, pol):
    return bytes([8, layer]) + pol


def set_skipped(layer, skip):
    return bytes([9, layer | (0x40 if skip else 0)])


def read(which, layer, head):
    return bytes([10, which, layer, head])


def nxt(layer, head, tokens, keys=True, write=True):
    return bytes([11, layer, head, TOKENS[tokens], (1 if keys else 0) | (2 if write else 0)])


def schedule(layers, ex=None, dmode=0):
    """Prefill chunks, decode bursts and explicit compressions on every layer."""
    ops = b""
    for l in range(layers):
        ops += append(l, 11, layout=l % 3 | ((l + 1) % 3) << 2 | (16 if l else 0), dmode=dmode, seed=10 + l, ex=ex)
    for r in range(3):
        for l in range(layers):
            ops += burst(l, 8 + 4 * r, dmode=dmode, seed=100 * r + l, ex=ex)
        ops += read(r, r % layers, r)
    ops += COMPRESS_ALL
    return ops


def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {}
    pols = {
        "lagkv": policy("lagkv", sink=2, lag=4, ratio=0.5, svr=1.0),
        "lagkv_keys_only": policy("lagkv", sink=1, lag=5, ratio=0.34, svr=0.0),
        "l2norm": policy("l2norm", sink=1, window=2, budget=20, interval=2),
        "l2norm_ratio": policy("l2norm", sink=1, window=1, ratio=0.5),
        "l2norm_chunked": policy("l2norm-chunked", sink=2, lag=4, ratio=0.5),
        "h2o": policy("h2o", sink=1, window=2, budget=16),
        "h2o_mean": policy("h2o", sink=0, window=3, budget=12, reduce=1),
        "h2o_max_adakv": policy("h2o", sink=1, window=1, budget=14, reduce=2, share=True, min_per_head=4),
        "l2norm_adakv": policy("l2norm", sink=0, window=2, budget=18, share=True, min_per_head=2),
        "random_adakv": policy("random", sink=1, window=0, budget=15, share=True, seed=9),
        "streaming": policy("streaming", sink=2, window=4, interval=3),
        "random": policy("random", sink=0, window=1, budget=17, seed=5, interval=2),
        "none": policy("none"),
    }
    exs = {"queries": extras(0, group=2), "probs": extras(4, group=1), "sums": extras(5, group=2)}
    mems = ["owned", "hsd", "shd", "llama", "hds", "paged", "mixed"]
    for i, (name, pol) in enumerate(pols.items()):
        for dtype in range(3):
            mem = mems[(i + dtype) % len(mems)]
            ex = list(exs.values())[(i + dtype) % 3] if name.startswith("h2o") else None
            heads = 1 + (i + dtype) % 3
            hd = [4, 8, 3, 17, 2, 16, 5][(i + 2 * dtype) % 7]
            hdr = header(dtype, layers=2, heads=heads, head_dim=hd, capacity=48, mem=mem, pol=pol, target=dtype)
            seeds[f"{name}_{['f32', 'f16', 'bf16'][dtype]}_{mem}"] = hdr + schedule(2, ex=ex, dmode=(i + dtype) % 6)
    # Explicit compression only (auto_compress off), skipped layers toggled.
    hdr = header(1, layers=3, heads=2, head_dim=8, capacity=64, mem="paged", pol=pols["lagkv"], auto=False, block=5)
    seeds["explicit_compress_paged_f16"] = hdr + append(0, 24) + append(1, 24) + append(2, 16) + set_skipped(1, True) + \
        COMPRESS_ALL + compress(0) + set_skipped(1, False) + compress(1) + read(4, 1, 0) + read(6, 2, 0)
    # Engine writes rows in place and commits; adoption of stale rows.
    hdr = header(0, layers=2, heads=3, head_dim=5, capacity=40, mem="llama", pol=pols["lagkv"])
    ops = b"".join(commit(l, 4, write=3, seed=l) for l in range(2))
    ops += b"".join(commit(l % 2, 1, write=1 + l % 3, seed=l) for l in range(24))
    ops += nxt(0, 1, 3) + commit(0, 3, write=0)
    seeds["commit_llama_f32"] = hdr + ops
    hdr = header(2, layers=1, heads=2, head_dim=4, capacity=32, mem="hds", pol=pols["h2o"])
    seeds["commit_h2o_bf16"] = hdr + commit(0, 8, ex=exs["queries"]) + b"".join(
        commit(0, 1, seed=s, ex=exs["probs"]) for s in range(12))
    # set_policy needs an empty layer; clear, then switch policies per layer.
    hdr = header(0, layers=3, heads=2, head_dim=6, capacity=48, mem="mixed", pol=pols["streaming"])
    ops = schedule(3)[:60] + set_policy(1, pols["h2o"]) + clear(1) + set_policy(1, pols["h2o"])
    ops += append(1, 8, ex=exs["sums"]) + burst(1, 12, ex=exs["queries"]) + clear() + set_policy(2, pols["l2norm_chunked"])
    ops += set_policy(0, pols["random_adakv"]) + schedule(3) + MOVE + schedule(3)
    seeds["set_policy_clear_mixed_f32"] = hdr + ops
    # Errors: bad layers/heads, overflow, bad inputs, h2o without attention; cache must be intact.
    hdr = header(1, layers=2, heads=2, head_dim=4, capacity=20, mem="shd", pol=pols["h2o"])
    ops = append(0, 8, ex=exs["queries"])
    ops += append(15, 1) + append(14, 1) + bytes([0, 0, 255, 0, 0, 0, 1, 0]) + extras()  # layer 2, -1, overflow
    for bad in range(232, 239):
        ops += append(0, 3, bad=bad, ex=exs["queries"])
    ops += append(0, 2, ex=extras(6)) + append(0, 2, ex=bytes([0, 224, 1])) + append(0, 2, ex=bytes([4, 226, 1]))
    ops += append(0, -1) + commit(1, 24) + nxt(0, 15, 1) + nxt(0, 0, 24) + read(0, 14, 0) + read(3, 0, 15)
    ops += compress(15) + clear(14) + set_policy(0, pols["lagkv"]) + set_skipped(15, True)
    seeds["errors_h2o_shd_f16"] = hdr + ops
    # Invalid configurations (each must be rejected without touching engine memory).
    bad_headers = {
        "cfg_layers0": dict(layers=1), "cfg_capacity0": dict(), "cfg_headdim1_lagkv": dict(head_dim=1),
    }
    h = bytearray(header(0, mem="paged"))
    h[2] = 8  # layers 0
    seeds["cfg_layers0"] = bytes(h)
    h = bytearray(header(1, mem="hsd"))
    h[5] = 76  # capacity 0
    seeds["cfg_capacity0"] = bytes(h)
    h = bytearray(header(2, mem="owned"))
    h[5] = 79  # capacity INT64_MAX: overflows
    seeds["cfg_capacity_overflow"] = bytes(h)
    seeds["cfg_headdim1_lagkv"] = header(0, head_dim=1, mem="shd")
    h = bytearray(header(0, mem="paged"))
    h[13] = 255  # block_size 0
    seeds["cfg_block_size0"] = bytes(h)
    h = bytearray(header(1, mem="hds"))
    h[15] = 31  # memory.size() != layers
    seeds["cfg_memory_size"] = bytes(h)
    h = bytearray(header(0, mem="llama"))
    h[6] = 2
    h[7] = 4  # skip_layers = {3}: out of range
    seeds["cfg_skip_out_of_range"] = bytes(h)
    del bad_headers
    for name, data in seeds.items():
        with open(os.path.join(out, f"seed_{name}"), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "cache"))
