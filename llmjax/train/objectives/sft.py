"""Supervised fine-tuning of a decoder: the loss is on the response only, the prompt is context.

Each example becomes prompt tokens (objective.template around the prompt, or the chat's turns
rendered by the chat template of the tokenizer's config, `chat_template`) followed by response
tokens and end-of-document (once: a chat template's turn may end with it); its own inputs,
next-token targets, positions from 0 and weights (1 on response targets only) are computed apart, then examples are packed
into rows of data.seq_len in file order, each in a segment of its own, so attention never
crosses from one example to another and no target is another example's token. Evaluation is
the held-out loss, plus generation: objective.eval_examples held-out prompts (spread through the file) are
completed (greedy, or beam search with objective.num_beams) and scored against the responses
with BLEU, chrF and ROUGE-L (`text_metrics`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmjax.data.errors import DataError
from llmjax.sample.generate import generate
from llmjax.sample.search import Settings
from llmjax.sample.select import Sampling
from llmjax.train.objectives import text_metrics
from llmjax.train.objectives.causal_lm import CausalLM
from llmjax.train.objectives.cross_entropy import mean
from llmjax.train.objectives.task import TaskObjective, fit, room_beside, spread


def template_parts(config) -> tuple[str, str]:
    before, found, after = config.objective.template.partition("{prompt}")
    if not found:
        raise DataError(f"objective.template={config.objective.template!r} has no {{prompt}}; write where "
                        f"the prompt goes, e.g. '{{prompt}}\\n'.")
    return before, after


def chat_template(tokenizer) -> dict | None:
    """The `chat_template` of the tokenizer_config.json beside the run's tokenizer (an imported
    model's), with the special-token texts it may use; None: llmjax's own "role: content" lines."""
    path = Path(tokenizer.path).parent / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(config.get("chat_template"), str):
        return None
    text = lambda value: value.get("content", "") if isinstance(value, dict) else value or ""  # noqa: E731
    return {"source": config["chat_template"], "bos_token": text(config.get("bos_token")),
            "eos_token": text(config.get("eos_token"))}


def chat_turns(messages: list[dict], template: dict | None = None) -> tuple[list[str], list[bool]]:
    """(text pieces, whether each is trained on): an assistant's turn is trained on, all else
    (and with a template, the header that opens an assistant turn) is context. A template is
    rendered for every prefix of the chat, each piece being what the next message adds."""
    if template is None:
        pieces, trained = [], []
        for message in messages:
            pieces += [f"{message['role']}: ", message["content"] + "\n"]
            trained += [False, message["role"] == "assistant"]
        return pieces, trained
    compiled = ImmutableSandboxedEnvironment().from_string(template["source"])

    def render(prefix, opening=False):
        return compiled.render(messages=prefix, add_generation_prompt=opening, bos_token=template["bos_token"],
                               eos_token=template["eos_token"])
    pieces, trained, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            header = render(messages[:i], opening=True)
            pieces.append(header[len(done):])
            trained.append(False)
            done = header
        text = render(messages[:i + 1])
        pieces.append(text[len(done):])
        trained.append(message["role"] == "assistant")
        done = text
    return pieces, trained


class SupervisedFineTuning(TaskObjective, CausalLM):
    name = "sft"
    kinds = ("generation", "chat")

    def encode(self, task, tokenizer, config) -> dict:
        length, eos, o = config.data.seq_len, tokenizer.eos_id, config.objective
        parts = split(task, tokenizer, config)
        examples = []  # (tokens, trained mask, where)
        for e, (head, prompt, tail, response) in zip(task.train + task.val, parts):
            # A row holds length + 1 tokens, end-of-document one of them.
            room = room_beside(len(head + tail), length, f"a row of data.seq_len={length}; raise data.seq_len",
                               e.where if task.kind == "chat" else "")
            prompt, response = keep(prompt, response, room, config, e.where)
            ended = response and response[-1][0] == eos  # A chat template's turn may end with it.
            example = head + prompt + tail + response + ([] if ended else [(eos, True)])
            examples.append(([t for t, _ in example], [trained for _, trained in example], e.where))
        train, val = examples[:len(task.train)], examples[len(task.train):]
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
        scored = spread(o.eval_examples, len(task.val))
        within = (f"model.max_seq_len={config.model.max_seq_len} beside objective.max_new_tokens={o.max_new_tokens}; "
                  f"lower objective.max_new_tokens")
        prompts = []  # Cut as the training rows' prompts are, so generation reads what training read.
        for i in scored:
            (head, prompt, tail, _), where = parts[len(task.train) + i], task.val[i].where
            room = room_beside(len(head + tail), config.model.max_seq_len - o.max_new_tokens, within,
                               where if task.kind == "chat" else "")
            prompts.append([t for t, _ in head + fit(prompt, room, config, where, "generation prompt", within) + tail])
        return {"train": pack(train, length, pad), "val": pack(val, length, pad), "prompts": prompts,
                "references": [reference(task.val[i]) for i in scored]}

    def extra_metrics(self, params, config, token_ids: dict) -> dict[str, float]:
        o, tokenizer = config.objective, token_ids["tokenizer"]
        settings = Settings(max_new_tokens=o.max_new_tokens, sampling=Sampling(temperature=0.0), num_beams=o.num_beams)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        out = generate(params, config, token_ids["prompts"], settings,
                       eos_ids=(tokenizer.eos_id,), pad_id=pad)["tokens"]
        texts = [tokenizer.decode([t for t in row if t not in (tokenizer.eos_id, pad)]).strip() for row in out]
        return text_metrics.scores(texts, token_ids["references"])

    def baseline(self, task, config) -> tuple[str, dict[str, float]]:
        """Copying the input (the prompt, or the chat's last user turn) as the answer."""
        examples = [task.val[i] for i in spread(config.objective.eval_examples, len(task.val))]
        copies = [e.fields["prompt"] if "prompt" in e.fields else
                  [m["content"] for m in e.fields["messages"] if m["role"] != "assistant"][-1] for e in examples]
        return "copy the input", text_metrics.scores(copies, [reference(e) for e in examples])

    def metrics(self, sums, num_bytes: float) -> dict[str, float]:
        del num_bytes
        loss = mean(float(sums[0]), float(sums[1]))
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def describe(self, values: dict[str, float]) -> str:
        text = f"loss {values['loss']:.4f} ppl {values['perplexity']:.2f}"
        if "bleu" in values:
            text += f" BLEU {values['bleu']:.2f} chrF {values['chrf']:.2f} ROUGE-L {values['rouge_l']:.2f}"
        return text


def reference(example) -> str:
    if "response" in example.fields:
        return example.fields["response"]
    return [m["content"] for m in example.fields["messages"] if m["role"] == "assistant"][-1]


def split(task, tokenizer, config) -> list[tuple[list, list, list, list]]:
    """Each example as (head, prompt, tail, response), lists of (token, trained) pairs. Truncation
    cuts the prompt and response only: the head and tail around the prompt (objective.template's
    text, or a chat's header opening the answer) are what tell the model that an answer starts.
    A chat's response is its last assistant turn (and any turn after it), its prompt all before."""
    examples = task.train + task.val
    if task.kind != "chat":
        head, tail = ([(t, False) for t in tokenizer.encode_batch([part])[0]] if part else []
                      for part in template_parts(config))
        ids = tokenizer.encode_batch([e.fields[k] for e in examples for k in ("prompt", "response")])
        return [(head, [(t, False) for t in p], tail, [(t, True) for t in r]) for p, r in zip(ids[0::2], ids[1::2])]
    template, parts = chat_template(tokenizer), []
    for e in examples:
        pieces, trained = chat_turns(e.fields["messages"], template)
        if not any(trained):
            raise DataError(f"{e.where}: the chat has no assistant message, so nothing to train on; add the "
                            f"assistant's reply or drop the line.")
        last, ids = max(i for i, flag in enumerate(trained) if flag), tokenizer.encode_batch(pieces)
        pairs = [(t, flag) for piece, flag in zip(ids, trained) for t in piece]
        header, answer = (sum(len(piece) for piece in ids[:n]) for n in (last - 1, last))
        parts.append(([], pairs[:header], pairs[header:answer], pairs[answer:]))
    return parts


def keep(prompt: list, response: list, room: int, config, where: str) -> tuple[list, list]:
    """The prompt and response cut to `room` tokens together. A whole example that fits is kept;
    one that does not loses prompt first, from the side objective.truncate names, down to half
    the room (or the whole prompt, if shorter); only a response longer than what is left is cut,
    at its end, since a response cut at its start would train the model to begin mid-answer.
    Under truncate=error, only an example that does not fit is refused."""
    if len(prompt) + len(response) <= room:
        return prompt, response
    if config.objective.truncate == "error":
        raise DataError(f"{where}: the prompt and response are {len(prompt)} + {len(response)} tokens, over the "
                        f"{room} that fit a row of data.seq_len={config.data.seq_len} beside the template and "
                        f"end-of-document; raise data.seq_len, shorten the example, or set objective.truncate=right "
                        f"(or left) to cut it.")
    response = response[:room - min(len(prompt), room // 2)]
    return fit(prompt, room - len(response), config, where, "prompt"), response


def pack(examples, length: int, pad: int) -> list[dict]:
    """Rows of `length` holding whole examples (inputs, targets, weights, positions, segments)
    in order; an example starts a new row when it does not fit the current one."""
    rows, current = [], []

    def flush():
        inputs = np.full(length, pad, np.int32)
        targets, weights = inputs.copy(), np.zeros(length, np.float32)
        positions, segments = np.zeros(length, np.int32), np.full(length, len(current), np.int32)
        at = 0
        for segment, (tokens, trained, _) in enumerate(current):
            n = len(tokens) - 1
            inputs[at:at + n], targets[at:at + n] = tokens[:-1], tokens[1:]
            weights[at:at + n] = trained[1:]
            positions[at:at + n], segments[at:at + n] = np.arange(n), segment
            at += n
        rows.append({"inputs": inputs, "targets": targets, "positions": positions, "segment_ids": segments,
                     "weights": weights})
        current.clear()

    for example in examples:
        if sum(len(t) - 1 for t, _, _ in current) + len(example[0]) - 1 > length:
            flush()
        current.append(example)
    if current:
        flush()
    return rows


OBJECTIVE = SupervisedFineTuning()
