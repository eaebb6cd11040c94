"""The PyTorch reference for the LSTM benchmark: one training step of torch.nn.LSTM of the same
shape as llmjax's (token embedding, stacked LSTM with optional projection, output layer tied to
the embedding when widths allow), AdamW, on random tokens. Runs under .venv-ref.

    .venv-ref/bin/python scripts/reference_torch_lstm.py --vocab 8192 --d_model 256 --hidden 672
        --proj 256 --layers 2 --batch 16 --seq 256 [--dtype bfloat16|float32] [--json OUT]

bf16 is CPU autocast (torch.nn.LSTM runs under it; with a projection torch leaves oneDNN for its
own implementation and says so), parameters and optimizer state fp32, as llmjax keeps them.
nn.LSTM is one fused op, so torch.compile has nothing to fuse; it runs eagerly.
"""

import argparse

import torch
import torch.nn.functional as F
from reference_torch import emit, time_steps  # This script's folder is on sys.path.


class LSTMLanguageModel(torch.nn.Module):
    def __init__(self, vocab, d_model, hidden, proj, layers):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d_model)
        self.lstm = torch.nn.LSTM(d_model, hidden, num_layers=layers, proj_size=proj, batch_first=True)
        out = proj or hidden
        self.lm_head = None if out == d_model else torch.nn.Linear(out, vocab, bias=False)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        return h @ self.embed.weight.T if self.lm_head is None else self.lm_head(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("vocab", 8192), ("d_model", 256), ("hidden", 672), ("proj", 256), ("layers", 2),
                          ("batch", 16), ("seq", 256), ("steps", 10), ("warmup", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LSTMLanguageModel(args.vocab, args.d_model, args.hidden, args.proj, args.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step(inputs, targets):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    median, _, loss = time_steps(step, args.vocab, args.batch, args.seq, args.warmup, args.steps)
    result = {"name": f"torch.nn.LSTM {args.dtype}", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "step_seconds": median, "tokens_per_sec": args.batch * args.seq / median, "final_loss": loss}
    emit(result, args.json)


if __name__ == "__main__":
    main()
