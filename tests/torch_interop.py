#!/usr/bin/python3
"""PyTorch's side of the interop tests (Debian's python3-torch): the PyTorch model of
configs/fashion_mnist_sequential.yaml, trained and saved as safetensors for Cohort's
model.init_from, or loaded from a Cohort checkpoint and evaluated.

    torch_interop.py train OUT.safetensors STEPS   trains in PyTorch, saves, prints test accuracy
    torch_interop.py eval MODEL.safetensors         loads (strict) and prints test accuracy

Both print one JSON line {"test_acc": ..., "test_loss": ...} over the 10000 test images, normalised
as Cohort normalises them, evaluated in float64. Safetensors is written and read by hand (Debian has no package for it)."""
import gzip, json, struct, sys
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def model():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def idx(name):
    with gzip.open(f"{DATA}/{name}.gz", "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = struct.unpack(">" + "I" * dims, raw[4:4 + 4 * dims])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def images(split):
    x = torch.from_numpy(idx(f"{split}-images-idx3-ubyte").astype(np.float32) / 255.0)
    return ((x - MEAN) / STD).unsqueeze(1), torch.from_numpy(idx(f"{split}-labels-idx1-ubyte").astype(np.int64))


DTYPES = {torch.float32: ("F32", "<f4"), torch.float64: ("F64", "<f8"), torch.int64: ("I64", "<i8")}
NUMPY = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}


def save(state, path):
    header, chunks, offset = {}, [], 0
    for name, t in state.items():
        code, np_dtype = DTYPES[t.dtype]
        data = t.detach().contiguous().numpy().astype(np_dtype).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def load(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        arr = np.frombuffer(data[b:end], NUMPY[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def evaluate(m):
    # In float64, as Cohort's side of the comparison (precision=fp64): two float32
    # implementations sum in different orders and may flip a near-tie's argmax.
    x, y = images("t10k")
    x = x.double()
    m = m.double()
    m.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            logits = m(x[i:i + 1000])
            correct += int((logits.argmax(1) == y[i:i + 1000]).sum())
            loss += float(F.cross_entropy(logits, y[i:i + 1000], reduction="sum"))
    return {"test_acc": correct / len(y), "test_loss": loss / len(y)}


def main():
    torch.set_num_threads(2)
    if sys.argv[1] == "train":
        torch.manual_seed(0)
        m = model()
        x, y = images("train")
        opt = torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        m.train()
        for step in range(int(sys.argv[3])):
            i = torch.randint(0, len(y), (64,), generator=g)
            opt.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()
            opt.step()
        save(m.state_dict(), sys.argv[2])
        print(json.dumps(evaluate(m)))
    elif sys.argv[1] == "eval":
        m = model()
        m.load_state_dict(load(sys.argv[2]), strict=True)
        print(json.dumps(evaluate(m)))
    else:
        sys.exit("usage: torch_interop.py train OUT STEPS | eval MODEL")


if __name__ == "__main__":
    main()
