"""The PyTorch peer of llmjax's bench36m benchmark: the same Llama model, written the plain way.

Runs under the reference venv, not llmjax's (torch is a benchmark-only extra, never a runtime
dependency; on this CPU the only torch wheel is for Python 3.11):

    scripts/setup_reference_env.sh            # creates .venv-ref (Python 3.11, torch==2.13.0)
    .venv-ref/bin/python scripts/reference_torch.py --steps 10 [--eager] [--json out.json]

What "the same" means: vocab 8192, d_model 512, 8 layers, 8 query and 8 key/value heads of
width 64, RoPE, RMSNorm, SwiGLU hidden 1536, untied output projection, sequence 512, batch 8;
fp32 parameters with bf16 autocast, `scaled_dot_product_attention(is_causal=True)`, fp32
cross-entropy, AdamW (b1 0.9, b2 0.95, weight decay 0.1 on matrices) with global-norm clipping
at 1.0, as llmjax's defaults. The step is `torch.compile`d unless --eager. Prints the median
step time after warm-up, tokens/s and the FLOP/s of the same formula as llmjax/flops.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, D_MODEL, LAYERS, HEADS, HEAD_DIM, MLP, SEQ, BATCH = 8192, 512, 8, 8, 64, 1536, 512, 8


def flops_per_token() -> float:
    """llmjax/flops.py's formula at bench36m (duplicated here: this runs without llmjax)."""
    non_embedding = LAYERS * (4 * D_MODEL * HEADS * HEAD_DIM + 3 * D_MODEL * MLP + 2 * D_MODEL) + D_MODEL
    return 6 * non_embedding + 6 * D_MODEL * VOCAB + 12 * LAYERS * D_MODEL * SEQ / 2


def rope_tables(seq: int, dim: int, theta: float = 10_000.0):
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x [B, H, T, D]: rotate the (first half, second half) pairs, as llmjax/model/layers/rope.py."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm = nn.RMSNorm(D_MODEL, eps=1e-5)
        self.qkv = nn.Linear(D_MODEL, 3 * HEADS * HEAD_DIM, bias=False)
        self.out = nn.Linear(HEADS * HEAD_DIM, D_MODEL, bias=False)
        self.mlp_norm = nn.RMSNorm(D_MODEL, eps=1e-5)
        self.gate_up = nn.Linear(D_MODEL, 2 * MLP, bias=False)
        self.down = nn.Linear(MLP, D_MODEL, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v,
                                                  is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, HEADS * HEAD_DIM))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.final_norm = nn.RMSNorm(D_MODEL, eps=1e-5)
        self.lm_head = nn.Linear(D_MODEL, VOCAB, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        cos, sin = rope_tables(SEQ, HEAD_DIM)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.lm_head(self.final_norm(x))


def build(compiled: bool):
    model = Llama()
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    others = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1},
                                   {"params": others, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95), eps=1e-8)

    def loss_fn(inputs, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(inputs)
        return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))

    forward_backward = torch.compile(loss_fn) if compiled else loss_fn

    def step(inputs, targets):
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    return step


def time_steps(step, vocab: int, batch: int, seq: int, warmup: int, steps: int) -> tuple[float, float, float]:
    """(median seconds of `steps` timed steps, seconds of the `warmup` untimed ones before
    them, the last loss) of `step(inputs, targets)` over four random token batches."""
    generator = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, vocab, (batch, seq + 1), generator=generator) for _ in range(4)]
    batches = [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]
    start = time.perf_counter()
    for i in range(warmup):
        step(*batches[i % 4]).item()
    warmup_seconds = time.perf_counter() - start
    times = []
    for i in range(steps):
        start = time.perf_counter()
        loss = step(*batches[i % 4]).item()
        times.append(time.perf_counter() - start)
    return statistics.median(times), warmup_seconds, loss


def emit(result: dict, path: str | None) -> None:
    """Prints the figures as one JSON line, and writes them to `path` when given."""
    print(json.dumps(result))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="Timed steps after warm-up.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps (compilation).")
    parser.add_argument("--eager", action="store_true", help="No torch.compile.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    torch.manual_seed(0)
    step = build(compiled=not args.eager)
    median, warmup_seconds, loss = time_steps(step, VOCAB, BATCH, SEQ, args.warmup, args.steps)
    tokens_per_sec = BATCH * SEQ / median
    result = {"name": "torch " + ("eager" if args.eager else "compiled"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "step_seconds": median, "tokens_per_sec": tokens_per_sec,
              "tflops": tokens_per_sec * flops_per_token() / 1e12, "warmup_seconds": warmup_seconds,
              "final_loss": loss}
    emit(result, args.json)


if __name__ == "__main__":
    main()
