"""Run an ONNX export with nothing of this library: a greedy loop over `decoder_model_merged.onnx` written
from optimum's layout alone, against `transformers`' greedy `generate` on the original GGUF.

benchmarks/export.py runs it with `python -S` and only the site-packages directory on sys.path,
so the editable install of multimodaltransformer (a .pth file) is not importable; the script
checks that. Prints one JSON line: per prompt, whether the tokens are equal.

  python -S benchmarks/export_outside.py SITE_PACKAGES ONNX_DIR GGUF_FILE N_NEW PROMPT...
"""

import json
import sys

sys.path.append(sys.argv[1])  # no .pth processing: only packages installed as such

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

try:
    import multimodaltransformer  # noqa: F401
    sys.exit("multimodaltransformer is importable here: this check must run without it")
except ImportError:
    pass


def ort_greedy(session: ort.InferenceSession, ids: list[int], n_new: int, eos: set[int]) -> list[int]:
    """optimum's loop: prefill with empty past_key_values.*, then feed present.* back, one token per step,
    up to and including an EOS token."""
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    G, D = past_inputs[0].shape[1], past_inputs[0].shape[3]
    past = {i.name: np.zeros((1, G, 0, D), np.float32) for i in past_inputs}
    x, out = np.array([ids], np.int64), []
    for _ in range(n_new):
        total = len(ids) + len(out)
        feed = {"input_ids": x, "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(total - x.shape[1], total, dtype=np.int64)[None]}
        logits, *present = session.run(None, feed | past)
        past = {i.name: p for i, p in zip(past_inputs, present)}
        out.append(int(logits[0, -1].argmax()))
        if out[-1] in eos:
            break
        x = np.array([[out[-1]]], np.int64)
    return out


def main() -> None:
    onnx_dir, gguf_file, n_new, prompts = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
    transformers.logging.set_verbosity_error()
    session = ort.InferenceSession(f"{onnx_dir}/decoder_model_merged.onnx", providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(onnx_dir)  # the exported tokenizer files
    folder, name = gguf_file.rsplit("/", 1)
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    eos = json.load(open(f"{onnx_dir}/generation_config.json"))["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for prompt in prompts:
        chat = [{"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        ref_ids = ref_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        with torch.no_grad():
            expected = ref.generate(torch.tensor([ref_ids]), max_new_tokens=n_new, do_sample=False)
        expected = expected[0, len(ref_ids):].tolist()
        got = ort_greedy(session, ids, n_new, eos)
        rows.append({"prompt": prompt, "same_prompt_ids": ids == ref_ids, "equal": got == expected,
                     "text": tok.decode(got, skip_special_tokens=True)[:80]})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
