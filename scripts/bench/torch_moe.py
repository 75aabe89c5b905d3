#!/usr/bin/env python3
"""PyTorch twin of moetrain's reference MoE model, for the training-speed anchor.

Same architecture, sizes, initialisation and optimizer as model.DefaultConfig:
token + learned position embeddings; 4 pre-norm blocks of RMSNorm -> causal MHA
(fused QKV, output projection) and RMSNorm -> top-2 MoE FFN (linear router,
softmax, top-k gates renormalised, 8 experts 256->512->256 exact GELU run as
grouped matmuls over their gathered tokens, Switch aux loss); final RMSNorm,
untied LM head, mean cross-entropy + 0.01 * sum(aux); no biases; AdamW 1e-3,
betas (0.9, 0.999), eps 1e-8, weight decay 0.01; batch 8 x 256.

Prints one line: "torch tokens/s: N" (median over timed steps).
Run with OpenBLAS's own CPU detection and one thread (torch.set_num_threads
does not limit OpenBLAS's pool, hence OPENBLAS_NUM_THREADS):
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 python3 scripts/bench/torch_moe.py --threads 1
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

V, D, L, HEADS, T, E, H, K = 256, 256, 4, 4, 256, 8, 512, 2
EPS, AUX_COEF, STD = 1e-5, 0.01, 0.02


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * self.weight


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.router = nn.Linear(D, E, bias=False)
        self.w1 = nn.Parameter(torch.empty(E, H, D))
        self.w2 = nn.Parameter(torch.empty(E, D, H))

    def forward(self, x):  # x [N, D]
        n = x.shape[0]
        probs = F.softmax(self.router(x), dim=-1)
        topv, topi = probs.topk(K, dim=-1)
        gates = topv / topv.sum(-1, keepdim=True)
        flat_e = topi.reshape(-1)
        # Switch/GShard aux: E * sum_e f_e * P_e (f_e piecewise constant).
        f = torch.bincount(flat_e, minlength=E).to(x.dtype) / (n * K)
        aux = E * (f * probs.mean(0)).sum()
        # Group slots by expert (stable), run each expert as matmuls.
        order = torch.sort(flat_e, stable=True)[1]
        tok = order // K
        slot_gate = gates.reshape(-1)[order]
        counts = torch.bincount(flat_e, minlength=E).tolist()
        # split/unbind (not slicing or w[e] indexing) so autograd does not
        # materialise a zero-filled full-size gradient per expert.
        xs = x[tok].split(counts)
        w1s, w2s = self.w1.unbind(0), self.w2.unbind(0)
        outs = []
        for e in range(E):
            if counts[e] == 0:
                continue
            h = F.gelu(xs[e] @ w1s[e].t())
            outs.append(h @ w2s[e].t())
        y = torch.cat(outs) * slot_gate[:, None]
        out = torch.zeros_like(x).index_add_(0, tok, y)
        return out, aux


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = RMSNorm(D), RMSNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.moe = MoE()

    def forward(self, x, mask):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        hd = D // HEADS
        q, k, v = (z.view(b, t, HEADS, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(mask[:t, :t], float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(b, t, D)
        x = x + self.proj(o)
        m, aux = self.moe(self.ln2(x).reshape(b * t, D))
        return x + m.view(b, t, D), aux


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = RMSNorm(D)
        self.head = nn.Linear(D, V, bias=False)
        for name, p in self.named_parameters():
            if "ln" not in name:
                nn.init.normal_(p, 0.0, STD)
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), 1))

    def forward(self, idx, targets):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t))[None]
        aux = 0.0
        for blk in self.blocks:
            x, a = blk(x, self.mask)
            aux = aux + a
        logits = self.head(self.ln_f(x))
        ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        return ce + AUX_COEF * aux, ce


def timed_steps(model, args, g):
    """Trains model with AdamW for args.warmup + args.steps steps on random
    batches drawn with generator g; returns the last loss and the seconds of
    each timed step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    times = []
    for i in range(args.warmup + args.steps):
        data = torch.randint(0, V, (args.batch, T + 1), generator=g)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        t0 = time.perf_counter()
        loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
    return loss, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Model()
    n = sum(p.numel() for p in model.parameters())
    assert n == 9_644_288, n
    loss, times = timed_steps(model, args, torch.Generator().manual_seed(1))
    med = statistics.median(times)
    print(f"torch {torch.__version__} threads {args.threads} params {n} loss {loss.item():.4f}")
    print(f"torch tokens/s: {args.batch * T / med:.0f}")


if __name__ == "__main__":
    main()
