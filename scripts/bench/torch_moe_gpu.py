#!/usr/bin/env python3
"""PyTorch twin of moetrain's MoE decoder on a GPU: the anchor of scripts/bench-gpu.sh.

Same architecture as model.Model (token + learned position embeddings; pre-norm
blocks of RMSNorm -> causal MHA with fused QKV and output projection, RMSNorm ->
top-k MoE FFN with a linear softmax router, gates renormalised over the k chosen,
experts d -> hidden -> d with exact GELU, Switch aux loss; final RMSNorm, untied LM
head, mean cross-entropy + aux_coef * sum(aux); no biases), trained with fused
AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01) under bf16 autocast
with fp32 master weights. Attention is scaled_dot_product_attention (causal);
the experts run as torch._grouped_mm over bf16 operands with tokens sorted by
expert (dropless), or as a per-expert loop with --experts loop.

Prints one line per measurement, "torch-<mode> tokens/s N mfu M peak_gib P step_ms S".
MFU counts 6 x active non-embedding parameters per token (LM head included, experts
k of E) plus 6 x layers x seq x d_model for causal attention, over 989.4 TFLOP/s
(H100 SXM dense bf16); --peak-tflops overrides the peak.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_moe  # the CPU twin, beside this file: the model's constants and RMSNorm
from torch_moe import AUX_COEF, EPS, STD

CONFIGS = {
    "gpu-small": dict(V=32768, D=1024, L=8, HEADS=16, T=2048, E=16, H=2816, K=2, B=8),
    "gpu-medium": dict(V=32768, D=2048, L=12, HEADS=32, T=2048, E=32, H=1408, K=4, B=8),
    "tiny": dict(V=512, D=128, L=2, HEADS=4, T=128, E=8, H=256, K=2, B=4),
}


class RMSNorm(torch_moe.RMSNorm):
    """torch_moe's RMSNorm computed in fp32 and returned in the input's dtype."""

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * self.weight.to(x.dtype)


class MoE(nn.Module):
    def __init__(self, c, grouped):
        super().__init__()
        self.c, self.grouped = c, grouped
        self.router = nn.Linear(c["D"], c["E"], bias=False)
        self.w1 = nn.Parameter(torch.empty(c["E"], c["H"], c["D"]))
        self.w2 = nn.Parameter(torch.empty(c["E"], c["D"], c["H"]))
        self.record, self.counts = False, None  # record: keep the last counts (eager check only)

    def forward(self, x):  # x [N, D]
        E, K = self.c["E"], self.c["K"]
        n = x.shape[0]
        probs = F.softmax(self.router(x).float(), dim=-1)
        topv, topi = probs.topk(K, dim=-1)
        gates = topv / topv.sum(-1, keepdim=True)
        flat_e = topi.reshape(-1)
        counts = torch.bincount(flat_e, minlength=E)
        if self.record:
            self.counts = counts
        aux = E * ((counts.float() / (n * K)) * probs.mean(0)).sum()
        order = torch.sort(flat_e, stable=True)[1]
        tok = order // K
        slot_gate = gates.reshape(-1)[order]
        xs = x[tok].to(torch.bfloat16)
        if self.grouped:
            offs = torch.cumsum(counts, 0).to(torch.int32)
            w1 = self.w1.to(torch.bfloat16).transpose(-2, -1)
            w2 = self.w2.to(torch.bfloat16).transpose(-2, -1)
            h = F.gelu(torch._grouped_mm(xs, w1, offs=offs))
            y = torch._grouped_mm(h, w2, offs=offs)
        else:
            outs = []
            for e, (xe, w1e, w2e) in enumerate(zip(xs.split(counts.tolist()), self.w1.unbind(0), self.w2.unbind(0))):
                if xe.shape[0]:
                    outs.append(F.gelu(xe @ w1e.t().to(xe.dtype)) @ w2e.t().to(xe.dtype))
            y = torch.cat(outs)
        y = y * slot_gate[:, None].to(y.dtype)
        out = torch.zeros(n, x.shape[1], dtype=y.dtype, device=x.device).index_add_(0, tok, y)
        return out, aux


class Block(nn.Module):
    def __init__(self, c, grouped):
        super().__init__()
        D = c["D"]
        self.c = c
        self.ln1, self.ln2 = RMSNorm(D), RMSNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.proj = nn.Linear(D, D, bias=False)
        self.moe = MoE(c, grouped)

    def forward(self, x):
        b, t, D = x.shape
        hd = D // self.c["HEADS"]
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (z.view(b, t, self.c["HEADS"], hd).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
        x = x + self.proj(o)
        m, aux = self.moe(self.ln2(x).reshape(b * t, D))
        return x + m.view(b, t, D).to(x.dtype), aux


class Model(nn.Module):
    def __init__(self, c, grouped):
        super().__init__()
        self.c = c
        self.tok = nn.Embedding(c["V"], c["D"])
        self.pos = nn.Embedding(c["T"], c["D"])
        self.blocks = nn.ModuleList(Block(c, grouped) for _ in range(c["L"]))
        self.ln_f = RMSNorm(c["D"])
        self.head = nn.Linear(c["D"], c["V"], bias=False)
        for name, p in self.named_parameters():
            if "ln" not in name:
                nn.init.normal_(p, 0.0, STD)

    def forward(self, idx, targets):
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))[None]
        aux = 0.0
        for blk in self.blocks:
            x, a = blk(x)
            aux = aux + a
        logits = self.head(self.ln_f(x))
        ce = F.cross_entropy(logits.reshape(-1, self.c["V"]).float(), targets.reshape(-1))
        return ce + AUX_COEF * aux


def flops_per_token(c):
    D, L, E, H, K, V, T = c["D"], c["L"], c["E"], c["H"], c["K"], c["V"], c["T"]
    active = L * (4 * D * D + E * D + K * 2 * D * H) + V * D
    return 6 * active + 6 * L * T * D


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="gpu-small", choices=sorted(CONFIGS))
    ap.add_argument("--mode", default="eager", choices=["eager", "compile"])
    ap.add_argument("--experts", default="grouped", choices=["grouped", "loop"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.4)
    args = ap.parse_args()
    c = CONFIGS[args.config]
    torch.manual_seed(0)
    dev = "cuda"
    model = Model(c, args.experts == "grouped").to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True)
    fwd = torch.compile(model) if args.mode == "compile" else model
    g = torch.Generator(device=dev).manual_seed(1)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        data = torch.randint(0, c["V"], (c["B"], c["T"] + 1), generator=g, device=dev)
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    # The routing the timed steps ended with: the largest expert load over
    # the mean, over the layers (one more eager forward on the last batch).
    moes = [mod for mod in model.modules() if isinstance(mod, MoE)]
    for mod in moes:
        mod.record = True
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, y)
    max_load = max((mod.counts.max() / mod.counts.float().mean()).item() for mod in moes)
    med = statistics.median(times)
    tps = c["B"] * c["T"] / med
    mfu = tps * flops_per_token(c) / (args.peak_tflops * 1e12)
    peak = torch.cuda.max_memory_allocated() / 2**30
    name = f"torch-{args.mode}" + ("-loop" if args.experts == "loop" else "")
    print(f"{name} {args.config} tokens/s {tps:.0f} mfu {mfu:.3f} peak_gib {peak:.2f} step_ms {med*1e3:.1f} loss {loss.item():.4f} torch {torch.__version__} max_load {max_load:.2f}", flush=True)


if __name__ == "__main__":
    main()
