#!/usr/bin/env python3
"""Parity check of torch_moe.Model against moetrain's model.

Loads a flat float32 parameter buffer in moetrain's layout order (tok_emb,
pos_emb, per layer ln1 qkv proj ln2 router w1 w2, ln_f, lm_head), optionally
the matching gradient buffer, and a batch (int32 tokens then targets, B x 256),
runs the torch twin in float64 and prints loss, CE, aux and the largest
relative gradient difference per tensor. With GRADS.bin it also checks the
given gradient against float64 central finite differences of the loss, at the
largest-gradient coordinate of every tensor (coordinates whose finite
difference disagrees with float64 autograd, i.e. where the perturbation flips
a routing choice, are counted as skipped).

  python3 scripts/bench/torch_check.py PARAMS.bin BATCH.bin [GRADS.bin]
"""
import sys

import numpy as np
import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import torch_moe as tm  # noqa: E402


def ordered_params(model):
    out = [model.tok.weight, model.pos.weight]
    for b in model.blocks:
        out += [b.ln1.weight, b.qkv.weight, b.proj.weight, b.ln2.weight, b.moe.router.weight, b.moe.w1, b.moe.w2]
    return out + [model.ln_f.weight, model.head.weight]


def main():
    flat = np.fromfile(sys.argv[1], dtype="<f4")
    batch = np.fromfile(sys.argv[2], dtype="<i4")
    model = tm.Model().double()
    params = ordered_params(model)
    assert sum(p.numel() for p in params) == flat.size, (sum(p.numel() for p in params), flat.size)
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(flat[off:off + n].astype(np.float64)).view_as(p))
            off += n
    half = batch.size // 2
    x = torch.from_numpy(batch[:half].astype(np.int64)).view(-1, tm.T)
    y = torch.from_numpy(batch[half:].astype(np.int64)).view(-1, tm.T)
    loss, ce = model(x, y)
    aux = (loss - ce) / tm.AUX_COEF
    print(f"torch loss {loss.item():.7f} ce {ce.item():.7f} aux {aux.item():.7f}")
    if len(sys.argv) > 3:
        loss.backward()
        grads = np.fromfile(sys.argv[3], dtype="<f4")
        off, worst = 0, 0.0
        for p in params:
            n = p.numel()
            g = grads[off:off + n].astype(np.float64)
            t = p.grad.reshape(-1).numpy()
            rel = np.abs(g - t).max() / (np.abs(t).max() + 1e-30)
            worst = max(worst, rel)
            off += n
        print(f"largest per-tensor gradient difference (relative to the tensor's max): {worst:.3g}")
        finite_differences(model, params, grads, x, y)


def finite_differences(model, params, grads, x, y, h=1e-6):
    """Central differences in float64, one coordinate per tensor."""
    off, checked, skipped, worst = 0, 0, 0, 0.0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            g = grads[off:off + n].astype(np.float64)
            i = int(np.abs(g).argmax())
            flat = p.view(-1)
            orig = flat[i].item()
            flat[i] = orig + h
            up = model(x, y)[0].item()
            flat[i] = orig - h
            down = model(x, y)[0].item()
            flat[i] = orig
            fd = (up - down) / (2 * h)
            auto = p.grad.reshape(-1)[i].item()
            scale = max(abs(fd), 1e-8)
            if abs(fd - auto) > 1e-3 * scale:
                skipped += 1  # the perturbation changed a routing choice
            else:
                checked += 1
                worst = max(worst, abs(g[i] - fd) / scale)
            off += n
    print(f"finite differences: checked {checked} skipped {skipped} worst relative error {worst:.3g}")


if __name__ == "__main__":
    main()
