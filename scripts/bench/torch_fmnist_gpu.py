"""PyTorch on the GPU, the reference for scripts/bench/train_gpu.sh: the Fashion-MNIST MLP or CNN of
../shared/bench/fmnist_lib.py, SGD with momentum 0.9, one epoch, the whole data set on the GPU.
  python3 torch_fmnist_gpu.py {mlp|cnn} EPOCHS BATCH DATA_DIR"""
import gzip, struct, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

kind, epochs, bs, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MEAN, STD = 0.2860, 0.3530
LR = {"mlp": 0.05, "cnn": 0.02}


def idx(name):
    with gzip.open(f"{data}/{name}") as f:
        nd = struct.unpack(">I", f.read(4))[0] & 0xff
        dims = struct.unpack(">" + "I" * nd, f.read(4 * nd))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)


def load(split, dev):
    x = idx(f"{split}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = idx(f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return (torch.from_numpy((x - MEAN) / STD).unsqueeze(1).to(dev), torch.from_numpy(y).to(dev))


class MLP(nn.Module):
    def __init__(s):
        super().__init__()
        s.l1, s.l2, s.l3 = nn.Linear(784, 512), nn.Linear(512, 512), nn.Linear(512, 10)

    def forward(s, x):
        return s.l3(F.relu(s.l2(F.relu(s.l1(x.flatten(1))))))


class CNN(nn.Module):
    def __init__(s):
        super().__init__()
        s.c1, s.c2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        s.f1, s.f2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, 10)

    def forward(s, x):
        x = F.max_pool2d(F.relu(s.c1(x)), 2)
        x = F.max_pool2d(F.relu(s.c2(x)), 2)
        return s.f2(F.relu(s.f1(x.flatten(1))))


dev = torch.device("cuda")
torch.manual_seed(0)
xtr, ytr = load("train", dev)
xte, yte = load("t10k", dev)
m = (MLP() if kind == "mlp" else CNN()).to(dev)
opt = torch.optim.SGD(m.parameters(), lr=LR[kind], momentum=0.9)
n, steps = xtr.shape[0], 0
torch.cuda.synchronize()
t0 = time.perf_counter()
for ep in range(epochs):
    perm = torch.randperm(n, device=dev)
    for i in range(0, n - bs + 1, bs):
        b = perm[i:i + bs]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(xtr[b]), ytr[b]).backward()
        opt.step()
        steps += 1
torch.cuda.synchronize()
dt = time.perf_counter() - t0
with torch.no_grad():
    acc = (m(xte).argmax(1) == yte).float().mean().item()
print(f"torch {torch.__version__} {kind} batch={bs} steps={steps} train_s={dt:.2f} "
      f"samples_per_s={steps * bs / dt:.0f} test_acc={acc:.4f}")
