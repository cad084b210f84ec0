#!/usr/bin/python3
"""PyTorch's outputs for the attention layers of a config model (Debian's python3-torch), for
tests/integration/test_config_models.cc. Writes, in float64:
    OUTDIR/model.safetensors  the state dict of the nn.Sequential below
    OUTDIR/io.safetensors     an input x [2, 5, 8] and the model's output y
The Sequential is the config's
    [attention {num_heads: 2, causal: true}, transformer_block {nhead: 2, dim_feedforward: 16,
     activation: gelu, norm_first: true, causal: true}, transformer_block {nhead: 4,
     dim_feedforward: 12}, layer_norm, linear {out: 3}]"""
import sys
import torch
import torch.nn as nn
from torch_interop import save


def causal(t):
    return torch.triu(torch.full((t, t), float("-inf"), dtype=torch.float64), 1)


class SelfAttention(nn.MultiheadAttention):
    def __init__(self, d, heads, is_causal):
        super().__init__(d, heads, batch_first=True)
        self.is_causal = is_causal

    def forward(self, x):
        mask = causal(x.shape[1]) if self.is_causal else None
        return super().forward(x, x, x, attn_mask=mask, need_weights=False)[0]


class Block(nn.TransformerEncoderLayer):
    def __init__(self, is_causal, **kw):
        super().__init__(batch_first=True, **kw)
        self.is_causal = is_causal

    def forward(self, x):
        return super().forward(x, src_mask=causal(x.shape[1]) if self.is_causal else None)


def main():
    torch.manual_seed(0)
    m = nn.Sequential(
        SelfAttention(8, 2, True),
        Block(True, d_model=8, nhead=2, dim_feedforward=16, activation="gelu", norm_first=True),
        Block(False, d_model=8, nhead=4, dim_feedforward=12),
        nn.LayerNorm(8),
        nn.Linear(8, 3)).double()
    with torch.no_grad():  # non-trivial norms and biases, so that a misplaced one shows
        for name, p in m.named_parameters():
            if "norm" in name or "bias" in name or name.startswith("3."):
                p.uniform_(-0.5, 1.5)
    m.eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
    save(m.state_dict(), sys.argv[1] + "/model.safetensors")
    save({"x": x, "y": y}, sys.argv[1] + "/io.safetensors")


if __name__ == "__main__":
    main()
