"""Chat: templates render as HF apply_chat_template, greedy answers equal HF generate on a tiny random Llama,
streamed deltas stay whole across multi-byte characters, history/reset/EOS/context, the terminal loop,
and (slow) `mmt chat` on SmolLM2 through a subprocess."""

import io
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers as hf
from gguf_utils import TEMPLATE, byte_level_tokenizer, smollm2_gguf, tiny_llama
from hub_utils import save

from multimodaltransformer import load_pretrained
from multimodaltransformer.chat import Chat, SamplingOptions, render_chat_template, run_terminal_chat
from multimodaltransformer.config import ConfigError
from multimodaltransformer.hub.gguf import bytes_to_unicode

# Llama-2 style: BOS from the variables, a system message folded into the first turn, loop controls, tojson
LLAMA2_LIKE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
               "{% else %}{% set sys = none %}{% endif %}"
               "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
               "{% if m['role'] == 'user' %}[INST] "
               "{% if sys and loop.index0 == 1 %}<<SYS>>{{ sys }}<</SYS>> {% endif %}"
               "{{ m['content'] | trim }} [/INST]{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}"
               "{% else %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %} {{ {'meta': 'é'} | tojson }}{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there "},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Café? ☕"}]


def hf_tokenizer(template: str = TEMPLATE):
    return hf.PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer(), bos_token="<|im_start|>",
                                      eos_token="<|im_end|>", chat_template=template)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random HF Llama directory with tokenizer.json and a ChatML template in tokenizer_config.json."""
    tok = byte_level_tokenizer()
    ref = tiny_llama(tok.get_vocab_size())
    path = save(ref, tmp_path_factory.mktemp("llama-chat"))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    return ref, path


@pytest.mark.parametrize("template", [TEMPLATE, LLAMA2_LIKE], ids=["chatml", "llama2-like"])
def test_rendering_matches_apply_chat_template(template):
    ref = hf_tokenizer(template)
    expected = ref.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert render_chat_template(template, MESSAGES, bos_token="<|im_start|>", eos_token="<|im_end|>") == expected
    with pytest.raises(ConfigError, match="unknown role tool"):
        render_chat_template(LLAMA2_LIKE, [{"role": "tool", "content": "x"}])


def test_greedy_answer_equals_transformers(checkpoint):
    ref, path = checkpoint
    chat = Chat(load_pretrained(path), system="Be brief.", options=SamplingOptions(max_new_tokens=12))
    chat.messages.append({"role": "user", "content": "hello world"})
    ids = chat.prompt_ids()
    chat.messages.clear()
    tok = hf_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    out = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False, eos_token_id=2,
                       pad_token_id=2)[0, len(ids):].tolist()
    out = out[:out.index(2)] if 2 in out else out
    deltas = list(chat.send("hello world"))
    assert "".join(deltas) == tok.decode(out, skip_special_tokens=True)
    assert chat.messages[-1] == {"role": "assistant", "content": "".join(deltas)}


def _script(model, tokens):
    """Make the LM head put all the mass on `tokens`, one per call (the prefill, then each decode
    step), over and over, to drive Chat through the generation engine deterministically."""
    vocab, calls = model.lm_head.out_features, itertools.cycle(tokens)

    class Scripted(torch.nn.Module):
        def forward(self, h):
            logits = torch.full((*h.shape[:-1], vocab), -1e4)
            logits[..., next(calls)] = 0.0
            return logits
    model.lm_head = Scripted()


def test_stream_deltas_stay_whole_across_multibyte_characters(checkpoint):
    _, path = checkpoint
    model = load_pretrained(path)
    vocab, spell = model.tokenizer.get_vocab(), bytes_to_unicode()
    text = "café ☕ ok"
    one_byte_tokens = [vocab[spell[b]] for b in text.encode()]  # é is 2 tokens, ☕ is 3
    _script(model, one_byte_tokens + [2] + one_byte_tokens)  # 2 = <|im_end|>, the EOS: the rest is not read
    chat = Chat(model)
    deltas = list(chat.send("hi"))
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)
    assert "☕" in deltas and "é" in deltas  # each appears once complete, in one piece
    assert chat.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]


def test_history_system_and_reset(checkpoint):
    _, path = checkpoint
    model = load_pretrained(path)
    _script(model, [vocab_id for vocab_id in model.tokenizer.encode("the fox").ids] + [2])
    chat = Chat(model, system="You are terse.")
    assert chat.ask("hello") == "the fox"
    chat.messages.append({"role": "user", "content": "and?"})
    second = model.tokenizer.decode(chat.prompt_ids(), skip_special_tokens=False)
    assert second == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                      "<|im_start|>assistant\nthe fox<|im_end|>\n<|im_start|>user\nand?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    chat.reset()
    assert chat.messages == [] and chat.history == [{"role": "system", "content": "You are terse."}]


def test_sampling_is_seeded_and_a_tiny_nucleus_is_greedy(checkpoint):
    _, path = checkpoint
    model = load_pretrained(path)
    greedy = Chat(model, options=SamplingOptions(max_new_tokens=10)).ask("hello")
    nucleus = Chat(model, options=SamplingOptions(max_new_tokens=10, temperature=1.0, top_p=1e-6)).ask("hello")
    assert nucleus == greedy
    hot = SamplingOptions(max_new_tokens=10, temperature=5.0, top_p=1.0, seed=3)
    a, b = Chat(model, options=hot).ask("hello"), Chat(model, options=hot).ask("hello")
    assert a == b
    with pytest.raises(ConfigError, match="temperature"):
        SamplingOptions(temperature=-1)


def test_full_context_forgets_the_oldest_exchanges(checkpoint):
    _, path = checkpoint
    model = load_pretrained(path)  # max_seq_len 128
    chat = Chat(model, options=SamplingOptions(max_new_tokens=20))
    for i in range(8):
        chat.ask(f"the quick brown fox jumps over the lazy dog {i}")  # ~20 tokens + an answer of up to 20
    assert len(chat.messages) < 16 and chat.messages[0]["content"] != "the quick brown fox jumps over the lazy dog 0"
    assert chat.messages[-2]["content"] == "the quick brown fox jumps over the lazy dog 7"
    kept = list(chat.messages)
    with pytest.raises(ConfigError, match="context is 128"):
        chat.ask("fox " * 200)
    assert chat.messages == kept  # the refused message leaves the history as it was


def test_models_without_a_template_are_named(checkpoint, tmp_path):
    _, path = checkpoint
    model = load_pretrained(path)
    model.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        Chat(model)
    with pytest.raises(ConfigError, match="not a decoder language model"):
        Chat(torch.nn.Linear(2, 2))


def test_terminal_chat_commands_and_eof(checkpoint):
    _, path = checkpoint
    model = load_pretrained(path)
    _script(model, model.tokenizer.encode("the fox").ids + [2])
    out = io.StringIO()
    run_terminal_chat(model, options=SamplingOptions(max_new_tokens=8),
                      stdin=io.StringIO("hello\n\n/reset\n/what\nhi there\n/exit\nnever read\n"), stdout=out)
    assert out.getvalue().splitlines() == ["the fox", "(new conversation)", "unknown command /what: /reset, /exit",
                                           "the fox"]
    out = io.StringIO()
    run_terminal_chat(model, stdin=io.StringIO("hello"), stdout=out)  # EOF without a newline or /exit
    assert out.getvalue() == "the fox\n"


@pytest.mark.slow
def test_mmt_chat_on_smollm2_streams_answers_and_exits_cleanly():
    path = smollm2_gguf()
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, "-m", "multimodaltransformer", "chat", str(path), "--max-new-tokens", "24",
                          "--device", "cpu", "--system", "Answer in one short sentence."],
                         input="What is the capital of France?\n/reset\nSay hello.\n", capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 3 and lines[1] == "(new conversation)", run.stdout
    assert "Paris" in lines[0] and lines[2], run.stdout
