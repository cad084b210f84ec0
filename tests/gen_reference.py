#!/usr/bin/python3
"""Generates tests/data/torch_reference.json: forward values and gradients of Cohort's ops as PyTorch
computes them for the same inputs, plus 5 optimiser steps. Run with Debian's python3-torch:
    /usr/bin/python3 tests/gen_reference.py
The output is committed so CI needs no PyTorch."""
import json, math, os
import torch
import torch.nn.functional as F

torch.manual_seed(0)
cases = []

def t(*shape, lo=-1.0, hi=1.0):
    return (torch.rand(*shape, dtype=torch.float32) * (hi - lo) + lo)

def enc(x):
    return {"shape": list(x.shape), "data": x.detach().double().flatten().tolist(), "dtype": str(x.dtype).replace("torch.", "")}

def case(name, fn, inputs, extra=None):
    ins = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*ins)
    w = torch.randn(out.shape, dtype=torch.float32)
    grads = []
    if any(x.requires_grad for x in ins):
        (out * w).sum().backward()
        grads = [enc(x.grad) if x.grad is not None else None for x in ins]
    c = {"name": name, "inputs": [enc(x) for x in inputs], "output": enc(out), "weight": enc(w), "grads": grads}
    if extra: c.update(extra)
    cases.append(c)

pos = lambda *s: t(*s, lo=0.2, hi=3.0)
case("add", torch.add, [t(3, 4), t(4)])
case("sub", torch.sub, [t(2, 1, 3), t(4, 1)])
case("mul", torch.mul, [t(3, 4), t(3, 1)])
case("div", torch.div, [t(3, 4), pos(4)])
case("pow_scalar", lambda x: torch.pow(x, 3.0), [t(5)])
case("pow_tensor", torch.pow, [pos(5), t(5)])
case("maximum", torch.maximum, [t(6), t(6)])
case("neg", torch.neg, [t(3, 4)])
case("exp", torch.exp, [t(3, 4)])
case("log", torch.log, [pos(3, 4)])
case("sqrt", torch.sqrt, [pos(3, 4)])
case("abs", torch.abs, [t(3, 4)])
case("clamp", lambda x: torch.clamp(x, -0.5, 0.25), [t(3, 4)])
case("relu", F.relu, [t(3, 4)])
case("gelu", F.gelu, [t(3, 4, lo=-3, hi=3)])
case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), [t(3, 4, lo=-3, hi=3)])
case("tanh", torch.tanh, [t(3, 4, lo=-2, hi=2)])
case("sigmoid", torch.sigmoid, [t(3, 4, lo=-3, hi=3)])
case("silu", F.silu, [t(3, 4, lo=-3, hi=3)])
case("sum_dim", lambda x: x.sum(dim=1, keepdim=True), [t(3, 4, 2)])
case("mean_dim", lambda x: x.mean(dim=(0, 2)), [t(3, 4, 2)])
case("var_dim", lambda x: x.var(dim=1), [t(3, 5)])
case("max_dim", lambda x: x.max(dim=1).values, [t(3, 5)])
case("min_dim", lambda x: x.min(dim=0, keepdim=True).values, [t(3, 5)])
case("matmul", torch.matmul, [t(3, 4), t(4, 5)])
case("matmul_batched", torch.matmul, [t(2, 1, 3, 4), t(3, 4, 2)])
case("linear", F.linear, [t(5, 3), t(4, 3), t(4)])
case("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=1), [t(2, 2, 5, 5), t(3, 2, 3, 3), t(3)])
case("conv2d_groups", lambda x, w: F.conv2d(x, w, None, stride=(2, 1), padding=(0, 1), dilation=(2, 1), groups=2),
     [t(1, 4, 7, 6), t(2, 2, 2, 3)])
case("max_pool2d", lambda x: F.max_pool2d(x, 2), [t(2, 2, 4, 4)])
case("avg_pool2d", lambda x: F.avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=False), [t(1, 2, 4, 3)])
case("softmax", lambda x: F.softmax(x, dim=-1), [t(3, 5, lo=-3, hi=3)])
case("log_softmax", lambda x: F.log_softmax(x, dim=0), [t(3, 5, lo=-3, hi=3)])
tgt = torch.tensor([0, 3, 1, 4, 2, 3])
case("cross_entropy", lambda x: F.cross_entropy(x, tgt), [t(6, 5, lo=-3, hi=3)], {"target": tgt.tolist()})
case("cross_entropy_smooth_ignore", lambda x: F.cross_entropy(x, tgt, ignore_index=3, label_smoothing=0.1),
     [t(6, 5, lo=-3, hi=3)], {"target": tgt.tolist()})
case("cross_entropy_sum", lambda x: F.cross_entropy(x, tgt, reduction="sum"), [t(6, 5, lo=-3, hi=3)],
     {"target": tgt.tolist()})
case("mse_loss", F.mse_loss, [t(3, 4), t(3, 4)])
case("layer_norm", lambda x, w, b: F.layer_norm(x, (5,), w, b), [t(3, 5), t(5), t(5)])
idx = torch.tensor([[1, 0], [3, 1]])
case("embedding", lambda w: F.embedding(idx, w), [t(4, 3)], {"indices": idx.flatten().tolist()})
def sdpa(q, k, v):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    m = torch.triu(torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool), 1)
    return torch.softmax(s.masked_fill(m, float("-inf")), -1) @ v
case("attention_causal", sdpa, [t(2, 4, 3), t(2, 4, 3), t(2, 4, 3)])

# Five optimiser steps on a small linear regression.
optim = []
x, y = t(8, 3), t(8, 2)
for name, make in [
    ("sgd_momentum_nesterov_wd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("sgd_plain", lambda p: torch.optim.SGD(p, lr=0.1)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)),
]:
    torch.manual_seed(1)
    w0, b0 = t(2, 3), t(2)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = make([w, b])
    steps = []
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(F.linear(x, w, b), y).backward()
        opt.step()
        steps.append({"w": enc(w), "b": enc(b)})
    optim.append({"name": name, "w0": enc(w0), "b0": enc(b0), "steps": steps})

os.makedirs(os.path.join(os.path.dirname(__file__), "data"), exist_ok=True)
with open(os.path.join(os.path.dirname(__file__), "data", "torch_reference.json"), "w") as f:
    json.dump({"torch": torch.__version__, "x": enc(x), "y": enc(y), "cases": cases, "optim": optim}, f)
print(f"wrote {len(cases)} op cases and {len(optim)} optimiser runs")
