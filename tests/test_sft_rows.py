"""SFT's rows and generation prompts from a task's examples: what is kept of an example that
does not fit (the prompt cut first, from the side objective.truncate names, the response only
at its end), the same for chat, generation prompts cut as the training rows' prompts are, and
truncate=error refusing exactly the examples that do not fit, naming file and line."""

import json

import pytest

from llmjax import tasks
from llmjax.config import default_config
from llmjax.data.errors import DataError
from llmjax.train.objectives import seq2seq
from llmjax.train.objectives.sft import OBJECTIVE

EOS, PAD = 0, 1


class Characters:
    """A tokenizer of one token per character, so that lengths in the tests are lengths of text."""
    eos_id, pad_id = EOS, PAD

    def __init__(self, path):
        self.path = str(path / "tokenizer.json")  # No tokenizer_config.json beside it: no chat template.

    def encode_batch(self, texts):
        return [[ord(c) for c in text] for text in texts]

    def decode(self, ids):
        return "".join(chr(t) for t in ids)


def encode(tmp_path, rows, kind="generation", truncate="right", seq_len=64, max_seq_len=64, objective=OBJECTIVE,
           **fields):
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = default_config(*(("t5", "seq2seq") if objective is seq2seq.OBJECTIVE else ("llama", "sft")))
    config.model.max_seq_len, config.data.seq_len = max_seq_len, seq_len
    config.objective.update(task="", task_files=str(tmp_path / "task.jsonl"), val_files=str(tmp_path / "task.jsonl"),
                            kind=kind, truncate=truncate, **fields)
    task = tasks.load(config.objective, tmp_path / "cache", lambda *_: None)
    tokenizer = Characters(tmp_path)
    return objective.encode(task, tokenizer, config), tokenizer


def first_example(encoded, tokenizer, split="train"):
    """(the text of the first example in the first row, with end-of-document as '$', its trained part)."""
    row = encoded[split][0]
    n = int((row["segment_ids"] == 0).sum())
    tokens = [*row["inputs"][:1], *row["targets"][:n]]
    text = "".join("$" if t == EOS else chr(t) for t in tokens)
    trained = "".join("$" if t == EOS else chr(t) for t, w in zip(row["targets"][:n], row["weights"][:n]) if w)
    return text, trained


@pytest.mark.parametrize("truncate", ["right", "left", "error"])
def test_an_example_that_fits_is_kept_whole_whatever_its_response_length(tmp_path, truncate):
    response = "r" * 50  # Over half the row, which responses were once cut to.
    encoded, tokenizer = encode(tmp_path, [{"prompt": "ab", "response": response}], truncate=truncate,
                                template="{prompt}:")
    assert first_example(encoded, tokenizer) == (f"ab:{response}$", f"{response}$")


PROMPT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"  # 62 characters.


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_the_prompt_is_cut_first_from_the_side_truncate_names_and_the_response_only_at_its_end(tmp_path, truncate):
    cut = (lambda text, n: text[:n]) if truncate == "right" else (lambda text, n: text[-n:])
    # A row has room for 63 characters of prompt and response beside the template's ':' and
    # end-of-document. A 20-character response is kept whole, the prompt cut to the other 43.
    encoded, tokenizer = encode(tmp_path, [{"prompt": PROMPT, "response": "r" * 20}], truncate=truncate,
                                template="{prompt}:")
    assert first_example(encoded, tokenizer) == (f"{cut(PROMPT, 43)}:{'r' * 20}$", f"{'r' * 20}$")
    # The prompt keeps half the row (31); a longer response loses its end, never its start.
    response = "0123456789" * 8
    encoded, tokenizer = encode(tmp_path, [{"prompt": PROMPT, "response": response}], truncate=truncate,
                                template="{prompt}:")
    assert first_example(encoded, tokenizer) == (f"{cut(PROMPT, 31)}:{response[:32]}$", f"{response[:32]}$")


def test_truncate_error_refuses_only_an_example_that_does_not_fit_naming_its_line(tmp_path):
    rows = [{"prompt": "ab", "response": "r" * 61}, {"prompt": "abc", "response": "r" * 61}]  # 63 fit, then 64.
    with pytest.raises(DataError, match=r"task.jsonl:2: the prompt and response are 3 \+ 61 tokens, over the 63 "
                                        r"that fit a row of data.seq_len=64.*objective.truncate=right"):
        encode(tmp_path, rows, truncate="error", template="{prompt}:", eval_examples=1)


@pytest.mark.parametrize("truncate", ["right", "left", "error"])
def test_the_generation_prompt_is_cut_as_the_training_rows_prompt_is(tmp_path, truncate):
    # 62 + 1 characters fit a row, and a generation prompt has 64 - 32 new tokens - 1 (':') = 31.
    rows = [{"prompt": PROMPT, "response": "r"}]
    if truncate == "error":
        with pytest.raises(DataError, match=r"task.jsonl:1: the generation prompt is 62 tokens, over the 31 that fit "
                                            r"model.max_seq_len=64 beside objective.max_new_tokens=32; lower "
                                            r"objective.max_new_tokens"):
            encode(tmp_path, rows, truncate=truncate, template="{prompt}:", max_new_tokens=32)
        return
    encoded, tokenizer = encode(tmp_path, rows, truncate=truncate, template="{prompt}:", max_new_tokens=32)
    assert first_example(encoded, tokenizer, "val")[0] == f"{PROMPT}:r$"
    assert tokenizer.decode(encoded["prompts"][0]) == (PROMPT[:31] if truncate == "right" else PROMPT[-31:]) + ":"


def chat(*turns):
    return {"messages": [{"role": role, "content": text} for role, text in zip(["user", "assistant"] * 2, turns)]}


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_a_long_chat_loses_its_user_turns_from_the_side_truncate_names_and_keeps_the_answer(tmp_path, truncate):
    # Rendered as "user: ...\n" and "assistant: ...\n" lines; the header opening the answer is
    # kept with it, so a row has 64 - 11 = 53 characters for the user's 107 and the answer's 11.
    user = "user: " + "u" * 100 + "\n"
    encoded, tokenizer = encode(tmp_path, [chat("u" * 100, "the answer")], kind="chat", truncate=truncate,
                                max_new_tokens=32)
    kept = user[:42] if truncate == "right" else user[-42:]
    assert first_example(encoded, tokenizer) == (f"{kept}assistant: the answer\n$", "the answer\n$")
    generation_prompt = user[:21] if truncate == "right" else user[-21:]  # 64 - 32 new tokens - 11.
    assert tokenizer.decode(encoded["prompts"][0]) == f"{generation_prompt}assistant: "


def test_a_chat_trains_on_every_assistant_turn_and_one_that_does_not_fit_is_refused_under_error(tmp_path):
    encoded, tokenizer = encode(tmp_path, [chat("hi", "hello", "and?", "bye")], kind="chat", truncate="error",
                                max_new_tokens=8)
    assert first_example(encoded, tokenizer) == ("user: hi\nassistant: hello\nuser: and?\nassistant: bye\n$",
                                                 "hello\nbye\n$")
    with pytest.raises(DataError, match=r"task.jsonl:1: the prompt and response are 107 \+ 11 tokens, over the 53"):
        encode(tmp_path, [chat("u" * 100, "the answer")], kind="chat", truncate="error")


def test_a_chat_without_an_assistant_turn_is_refused_naming_its_line(tmp_path):
    rows = [chat("hi", "hello"), {"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match="task.jsonl:2: the chat has no assistant message"):
        encode(tmp_path, rows, kind="chat")


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_an_encoder_decoders_response_is_cut_at_its_end_and_its_prompt_from_the_side_truncate_names(tmp_path,
                                                                                                   truncate):
    response = "0123456789" * 8
    encoded, tokenizer = encode(tmp_path, [{"prompt": PROMPT, "response": response}], truncate=truncate,
                                objective=seq2seq.OBJECTIVE, seq_len=32, template="{prompt}:", targets_length=16)
    row = encoded["train"][0]
    assert tokenizer.decode(row["targets"][:row["weights"].astype(bool).sum()]) == response[:15] + chr(EOS)
    assert tokenizer.decode(row["inputs"]) == (PROMPT[:30] if truncate == "right" else PROMPT[-30:]) + ":" + chr(EOS)


def test_a_chat_template_that_ends_a_turn_with_end_of_document_gets_no_second_one(tmp_path):
    # The template's eos_token text "\x00" is EOS in the one-token-per-character tokenizer.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "\x00", "chat_template": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
                                              "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}))
    encoded, tokenizer = encode(tmp_path, [chat("hi", "hello", "and?", "bye")], kind="chat", max_new_tokens=8)
    assert first_example(encoded, tokenizer) == ("<user>hi$<assistant>hello$<user>and?$<assistant>bye$", "hello$bye$")


@pytest.mark.parametrize("objective", [OBJECTIVE, seq2seq.OBJECTIVE])
def test_a_template_that_leaves_no_room_is_refused_as_the_templates_fault_not_an_examples(tmp_path, objective):
    with pytest.raises(DataError) as refused:
        encode(tmp_path, [{"prompt": "abc", "response": "xyz"}], objective=objective, seq_len=64,
               template="T" * 70 + "{prompt}", **({"targets_length": 8} if objective is seq2seq.OBJECTIVE else {}))
    assert str(refused.value).startswith("the text of objective.template around {prompt} is 70 tokens, leaving no "
                                         "room in a row of data.seq_len=64"), refused.value
    assert "task.jsonl" not in str(refused.value) and str(refused.value).endswith("or shorten objective.template.")
