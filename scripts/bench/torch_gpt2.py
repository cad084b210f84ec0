"""PyTorch reference for scripts/bench/gpt2_gpu.sh: Cohort's `gpt` model (pre-LayerNorm blocks,
fused qkv projection, GELU tanh, output head tied to the token embedding) with the same parameter
names, trained with AdamW on sequential batches of an llm.c token file.

  torch_gpt2.py tokens OUT.bin TEXT...          write TEXT files' bytes (repeated to 2M tokens) as
                                                an llm.c token file
  torch_gpt2.py init OUT.safetensors [shape]    write seeded initial weights (safetensors)
  torch_gpt2.py train TOKENS INIT MODE STEPS [shape]
      MODE: eager-bf16 | compile-bf16 | eager-fp32 | eager-tf32; prints the tokens/s of the
      steps after the first 10, and with PRINT_LOSSES=1 the loss of every step
shape: layers,heads,dim,context,vocab,batch (default GPT-2 small: 12,12,768,1024,50257,8)."""
import json, os, struct, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPE = (12, 12, 768, 1024, 50257, 8)


def parse_shape(argv, i):
    return tuple(int(v) for v in argv[i].split(",")) if len(argv) > i else SHAPE


def attention(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):  # PyTorch 2: flash attention on a GPU
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return s.softmax(-1) @ v


class Block(nn.Module):
    def __init__(s, dim, heads):
        super().__init__()
        s.heads = heads
        s.ln1, s.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        s.attn = nn.Module()
        s.attn.qkv, s.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        s.fc, s.proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.attn.qkv(s.ln1(x)).split(C, dim=2)
        heads = lambda t: t.view(B, T, s.heads, C // s.heads).transpose(1, 2)
        y = attention(heads(q), heads(k), heads(v))
        x = x + s.attn.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + s.proj(F.gelu(s.fc(s.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(s, layers, heads, dim, context, vocab):
        super().__init__()
        s.tok, s.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        nn.init.normal_(s.tok.weight, 0.0, 0.02)
        nn.init.normal_(s.pos.weight, 0.0, 0.02)
        s.layers = layers
        for i in range(layers):
            setattr(s, f"h{i}", Block(dim, heads))
        s.ln_f = nn.LayerNorm(dim)

    def forward(s, idx):
        h = s.tok(idx) + s.pos(torch.arange(idx.shape[1], device=idx.device))
        for i in range(s.layers):
            h = getattr(s, f"h{i}")(h)
        return s.ln_f(h) @ s.tok.weight.t()


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in sorted(tensors.items()):
        b = t.detach().cpu().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(e["shape"]).copy())
    return out


def read_tokens(path):
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(1024), dtype=np.int32)
        assert head[0] == 20240520, f"{path} is not an llm.c token file"
        return np.frombuffer(f.read(), dtype=np.uint16)[: head[2]]


def main():
    cmd = sys.argv[1]
    if cmd == "tokens":
        data = b"".join(open(p, "rb").read() for p in sys.argv[3:])
        toks = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        toks = np.tile(toks, -(-(1 << 21) // len(toks)))  # at least 2M tokens: 250 GPT-2 batches
        head = np.zeros(256, dtype=np.int32)
        head[:3] = (20240520, 1, len(toks))
        with open(sys.argv[2], "wb") as f:
            f.write(head.tobytes() + toks.tobytes())
        print(f"{len(toks)} tokens")
        return
    if cmd == "init":
        layers, heads, dim, context, vocab, _ = parse_shape(sys.argv, 3)
        torch.manual_seed(0)
        write_safetensors(sys.argv[2], GPT(layers, heads, dim, context, vocab).state_dict())
        return
    tokens, init, mode, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    layers, heads, dim, context, vocab, batch = parse_shape(sys.argv, 6)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = mode == "eager-tf32"
    torch.backends.cudnn.allow_tf32 = mode == "eager-tf32"
    model = GPT(layers, heads, dim, context, vocab)
    model.load_state_dict(read_safetensors(init))
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1)
    step_fn = model
    if mode.startswith("compile"):
        step_fn = torch.compile(model)
    low = torch.bfloat16 if mode.endswith("bf16") else None
    toks = torch.from_numpy(read_tokens(tokens).astype(np.int64))
    per = batch * context
    print_losses = os.environ.get("PRINT_LOSSES") == "1"
    t_start = None
    for s in range(steps):
        if s == 10:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_start = time.perf_counter()
        # Sample i is tokens [i*context, i*context + context] (input, then target shifted by one).
        xs, ys = [], []
        for i in range(s * batch, (s + 1) * batch):
            chunk = toks[i * context: i * context + context + 1]
            xs.append(chunk[:-1])
            ys.append(chunk[1:])
        x, y = torch.stack(xs).to(dev, non_blocking=True), torch.stack(ys).to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=low, enabled=low is not None):
            logits = step_fn(x)
        loss = F.cross_entropy(logits.float().view(-1, vocab), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if print_losses:  # a synchronisation per step: not for timed runs
            print(f"step {s + 1} loss {loss.item():.6f}", flush=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if t_start is not None:
        dt = time.perf_counter() - t_start
        print(f"torch {torch.__version__} {mode} steps {steps - 10} tokens_per_s {(steps - 10) * per / dt:.0f}")


if __name__ == "__main__":
    main()
