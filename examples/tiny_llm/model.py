"""Tiny Llama-style decoder-only byte-level language model (PyTorch).

This is the single source of truth for the architecture; FORMAT.md describes
exactly the same computation for the C++ inference engine.

Architecture (see FORMAT.md for the normative description):
  * vocabulary: 256 raw bytes (token id == byte value), no special tokens
  * token embedding E [vocab, d_model]; TIED with the LM head (logits = h @ E^T)
  * n_layers pre-norm blocks:
        h = x + Wo(attn(RoPE(Wq rms(x)), RoPE(Wk rms(x)), Wv rms(x)))
        x' = h + Wdown(silu(Wgate rms(h)) * Wup rms(h))
  * RMSNorm: y = x / sqrt(mean(x^2) + eps) * w          (eps = 1e-5)
  * RoPE: NeoX / HF-Llama "split halves" pairing: dim i pairs with i + hd/2,
    inv_freq[i] = base^(-2i/hd), i in [0, hd/2), base = 10000, positions 0..T-1
  * grouped-query attention: n_heads query heads, n_kv_heads KV heads,
    query head h uses KV head h // (n_heads // n_kv_heads)
  * scores scaled by 1/sqrt(head_dim), causal softmax
  * no biases anywhere
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    ffn_dim: int = 384
    vocab: int = 256
    max_ctx: int = 1024
    rope_base: float = 10000.0
    rms_eps: float = 1e-5

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, T, base, device=None, dtype=torch.float32):
    """cos/sin tables of shape [T, head_dim/2] (computed in float64, then cast)."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / head_dim)
    pos = torch.arange(T, dtype=torch.float64)
    ang = pos[:, None] * inv_freq[None, :]
    return ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype)


def apply_rope(x, cos, sin):
    """x: [B, H, T, hd]; split-halves pairing (x[i], x[i+hd/2])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.wq = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)

    def forward(self, x, cos, sin, mask):
        c = self.c
        B, T, _ = x.shape
        g = c.n_heads // c.n_kv_heads
        q = self.wq(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin) * (1.0 / math.sqrt(c.head_dim))
        k = apply_rope(k, cos, sin)
        # GQA: query head h uses kv head h // g.  Group the g query heads that share a kv
        # head: [B, n_kv, g, T, hd].  Causal attention is computed in query chunks so the
        # fully-masked upper triangle is mostly skipped (pure speed optimisation).
        q = q.view(B, c.n_kv_heads, g, T, c.head_dim)
        nchunk = max(1, T // 256)
        cs = (T + nchunk - 1) // nchunk
        outs = []
        for s in range(0, T, cs):
            e = min(T, s + cs)
            att = q[:, :, :, s:e] @ k[:, :, None, :e].transpose(-2, -1)  # [B,kv,g,e-s,e]
            att = att + mask[s:e, :e]
            att = torch.softmax(att, dim=-1)
            outs.append(att @ v[:, :, None, :e])  # [B,kv,g,e-s,hd]
        y = torch.cat(outs, dim=3) if len(outs) > 1 else outs[0]
        y = y.reshape(B, c.n_heads, T, c.head_dim).transpose(1, 2).reshape(B, T, c.n_heads * c.head_dim)
        return self.wo(y)


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.w_gate = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.w_up = nn.Linear(c.d_model, c.ffn_dim, bias=False)
        self.w_down = nn.Linear(c.ffn_dim, c.d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.rms_eps)
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c.d_model, c.rms_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        x = x + self.mlp(self.ffn_norm(x))
        return x


class TinyLlama(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab, c.d_model)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.n_layers)])
        self.norm = RMSNorm(c.d_model, c.rms_eps)
        self._rope_cache = {}
        self.reset_parameters()

    def reset_parameters(self):
        # std = 1/sqrt(fan_in) for every matrix (embedding included), residual output
        # projections (wo, w_down) further scaled by 1/sqrt(2*n_layers).  At d_model=128 the
        # GPT-2 default (0.02) makes q.k ~6x too small and induction/copy heads formed far
        # too slowly (no copying at all after 1200 steps in a first attempt).
        for n, p in self.named_parameters():
            if p.dim() == 2:
                s = 1.0 / math.sqrt(p.shape[1])
                if n.endswith("wo.weight") or n.endswith("w_down.weight"):
                    s = s / math.sqrt(2 * self.c.n_layers)
                nn.init.normal_(p, mean=0.0, std=s)

    def _tables(self, T, device):
        key = (T, str(device))
        if key not in self._rope_cache:
            cos, sin = rope_tables(self.c.head_dim, T, self.c.rope_base, device)
            mask = torch.full((T, T), float("-inf"), device=device).triu(1)  # additive causal mask
            self._rope_cache[key] = (cos, sin, mask)
        return self._rope_cache[key]

    def forward(self, idx):
        """idx: [B, T] int64 byte ids -> logits [B, T, vocab] (float32)."""
        B, T = idx.shape
        cos, sin, mask = self._tables(T, idx.device)
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        return x @ self.embed.weight.t()  # tied LM head

    @torch.no_grad()
    def greedy(self, prompt_ids, n_new):
        """Greedy decode without KV cache (full recompute; fine for evaluation)."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        out = []
        for _ in range(n_new):
            logits = self.forward(ids)[0, -1]
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        return out


def load_checkpoint(path):
    ck = torch.load(path, map_location="cpu")
    model = TinyLlama(Config(**ck["config"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck
