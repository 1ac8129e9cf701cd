"""`mmt imagine`: prompts -> images with a text-to-image model (models/t2i.py), optionally re-ranked.

Re-ranking (DALL-E kept the best of 512 samples by CLIP score): draw `rerank` x n candidates per
prompt and keep the n whose image-text similarity, by one of the library's own contrastive models
(`encode_image` / `encode_text`, trained by `mmt demo t2i` into MODEL/reranker), is highest.
Files: one prompt -> OUT/0.png .. OUT/{n-1}.png; a prompts file -> OUT/{line:04d}-{k}.png per line
(numbered from 0), best first when re-ranked; OUT/imagine.json records prompts and settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .models.t2i import SamplingDefaults, TextToImage

MAX_N = 16  # images per prompt
SIZES = (64, 128, 256, 512, 1024)  # output sides: the model's 64 pixels, upscaled by whole factors


@dataclass
class ImagineOptions:
    """Sampling options; a None takes the model's default (`TextToImageConfig.sampling`, `resolve`)."""

    n: int = 4
    guidance: float | None = None  # classifier-free guidance scale; 1 = none
    temperature: float | None = None
    top_k: int | None = None  # 0: off
    top_p: float | None = None
    seed: int | None = None
    rerank: int | None = None  # candidates drawn per kept image (1: no re-ranking)
    batch_size: int = 64  # images sampled together

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be an integer in 1..{MAX_N}, got {self.n!r}")
        if self.rerank is not None and (not isinstance(self.rerank, int) or not 1 <= self.rerank <= 64):
            raise ValueError(f"rerank must be an integer in 1..64, got {self.rerank!r}")
        if self.guidance is not None and not 0 <= self.guidance <= 30:
            raise ValueError(f"guidance must be in [0, 30], got {self.guidance}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def resolve(self, defaults: SamplingDefaults, has_reranker: bool) -> "ImagineOptions":
        """Every None filled from the model's defaults; its default re-ranking only with a re-ranker."""
        pick = {k: getattr(defaults, k) for k in ("guidance", "temperature", "top_k", "top_p")
                if getattr(self, k) is None}
        rerank = self.rerank if self.rerank is not None else defaults.rerank if has_reranker else 1
        return replace(self, **pick, rerank=rerank)


def to_pil(pixels: torch.Tensor, size: int = 64) -> list[Image.Image]:
    """(N, 3, S, S) in [-1, 1] -> RGB images, upscaled to `size` (nearest: the model's pixels, not a blur)."""
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray(np.ascontiguousarray(a)) for a in arr]
    return [im if im.size == (size, size) else im.resize((size, size), Image.NEAREST) for im in images]


def parse_size(size: str | int | None, native: int) -> int:
    """'256x256' (OpenAI's form), '256' or 256 -> 256; square, a whole multiple of the model's side, <= 1024."""
    if size is None:
        return native
    text = str(size).lower().strip()
    w, _, h = text.partition("x")
    if not w.isdigit() or (h and h != w):
        raise ValueError(f"size must be square, 'WxW' with W in {list(SIZES)}, got {size!r}")
    side = int(w)
    if side not in SIZES or side % native:
        raise ValueError(f"size {side}x{side} is not available: choose one of "
                         f"{', '.join(f'{s}x{s}' for s in SIZES if s % native == 0)}")
    return side


class Reranker:
    """Scores (image, text) pairs by cosine similarity of a contrastive model's embeddings."""

    def __init__(self, model: Any) -> None:
        for need in ("encode_image", "encode_text", "tokenizer", "image_processor"):
            if getattr(model, need, None) is None:
                raise ValueError(f"the re-ranker must be a contrastive model of this library; it lacks {need}")
        self.model = model.eval()

    @classmethod
    def load(cls, path: str | Path) -> "Reranker":
        from .hub import load_pretrained

        if not Path(path, "config.json").is_file():
            raise FileNotFoundError(f"no re-ranker at {path} (train one with `mmt demo t2i`, or pass --rerank-model)")
        return cls(load_pretrained(path))

    @torch.inference_mode()
    def scores(self, images: Sequence[Image.Image], text: str) -> torch.Tensor:
        tok, proc = self.model.tokenizer, self.model.image_processor
        pixels = torch.stack([proc(im) for im in images])
        # as training truncates (data/collate.py): at most max_seq_len tokens, the closing one kept
        ids = torch.tensor([[tok.bos_id, *tok.encode(text)][:self.model.max_seq_len - 1] + [tok.sep_id]])
        img = F.normalize(self.model.encode_image(pixels), dim=-1)
        txt = F.normalize(self.model.encode_text(ids), dim=-1)
        return (img @ txt.t()).squeeze(1)  # (N,)


def imagine(model: TextToImage, prompts: Sequence[str], options: ImagineOptions | None = None,
            reranker: Reranker | None = None, size: int | None = None, progress: bool = False) -> list[list[Image.Image]]:
    """n images per prompt (prompt-major), best first when re-ranked. Every prompt is checked first."""
    o = (options or ImagineOptions()).resolve(model.config.sampling, reranker is not None)
    if not prompts:
        raise ValueError("no prompts given")
    model.tokenize(prompts)  # errors for empty, over-long or unknown-word prompts before any work
    if o.rerank > 1 and reranker is None:
        raise ValueError("rerank > 1 needs a re-ranker (a contrastive model): MODEL/reranker or --rerank-model")
    native = model.config.vqvae.image_size
    size = native if size is None else size
    per_prompt = o.n * o.rerank
    step = max(1, o.batch_size // per_prompt)  # prompts per sampling batch
    generator = torch.Generator().manual_seed(o.seed) if o.seed is not None else None
    out: list[list[Image.Image]] = []
    bar = tqdm(total=len(prompts) * o.n, desc="images", unit="img", disable=not progress)
    for start in range(0, len(prompts), step):
        chunk = list(prompts[start:start + step])
        codes = model.generate_codes(chunk, per_prompt, guidance=o.guidance, temperature=o.temperature,
                                     top_k=o.top_k, top_p=o.top_p, progress=progress, generator=generator)
        images = to_pil(model.decode(codes), native)
        for p, prompt in enumerate(chunk):
            candidates = images[p * per_prompt:(p + 1) * per_prompt]
            if reranker is not None and o.rerank > 1:
                order = reranker.scores(candidates, prompt).argsort(descending=True)[:o.n].tolist()
                candidates = [candidates[i] for i in order]
            out.append([im if size == native else im.resize((size, size), Image.NEAREST) for im in candidates])
            bar.update(o.n)
    bar.close()
    return out


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (a final newline is not a line); an empty line is an error naming it."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    if text == "":
        raise ValueError(f"{path}: no prompts")
    for i, line in enumerate(lines):
        if not line.strip():
            raise ValueError(f"{path}: line {i} (from 0) is empty; every line must be a prompt")
    return [line.strip() for line in lines]


def run_imagine(model_dir: str | Path, out: str | Path, prompt: str | None = None, prompts_file: str | None = None,
                options: ImagineOptions | None = None, rerank_model: str | None = None, size: str | None = None,
                progress: bool = True) -> list[Path]:
    """The `mmt imagine` command: write the images and OUT/imagine.json; returns the image paths."""
    from .hub import load_pretrained

    if (prompt is None) == (prompts_file is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompts FILE")
    o = options or ImagineOptions()
    prompts = [prompt] if prompt is not None else read_prompts(prompts_file)  # type: ignore[arg-type]
    model = load_pretrained(model_dir)
    if not isinstance(model, TextToImage):
        raise ValueError(f"{model_dir} is a {type(model).__name__}, not a text-to-image model (mmt demo t2i makes one)")
    side = parse_size(size, model.config.vqvae.image_size)
    reranker = None
    rerank_dir = Path(rerank_model) if rerank_model else Path(model_dir) / "reranker"
    by_default = o.rerank is None and model.config.sampling.rerank > 1 and (rerank_dir / "config.json").is_file()
    if (o.rerank or 1) > 1 or by_default:  # asked for, or the model's default and its re-ranker is there
        reranker = Reranker.load(rerank_dir)
    o = o.resolve(model.config.sampling, reranker is not None)
    start = time.perf_counter()
    images = imagine(model, prompts, o, reranker, side, progress)
    seconds = time.perf_counter() - start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for line, row in enumerate(images):
        for k, im in enumerate(row):
            path = out / (f"{k}.png" if prompt is not None else f"{line:04d}-{k}.png")
            im.save(path)
            paths.append(path)
    (out / "imagine.json").write_text(json.dumps({"model": str(model_dir), "prompts": prompts, "size": side,
                                                  **asdict(o), "seconds": round(seconds, 2),
                                                  "images_per_second": round(len(paths) / seconds, 2)},
                                                 indent=2) + "\n")
    return paths


def add_imagine_command(sub: Any) -> None:
    from .config import ConfigError

    p = sub.add_parser("imagine", help="text to image with a model from `mmt demo t2i` (or a t2i run)")
    p.add_argument("model", help="a text-to-image model directory (runs/demo-t2i/model)")
    p.add_argument("--prompt", help="one prompt: writes OUT/0.png .. OUT/{n-1}.png")
    p.add_argument("--prompts", help="a file of prompts, one per line: writes OUT/{line:04d}-{k}.png (line from 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=4, help=f"images per prompt (1..{MAX_N}, default 4)")
    p.add_argument("--seed", type=int, help="sampling seed (same seed, same images)")
    # sampling options left out take the model's defaults (its config.json "sampling", set by its training config)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none; default: the model's)")
    p.add_argument("--temperature", type=float, help="default: the model's")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest codes (0: all; default: the model's)")
    p.add_argument("--top-p", type=float, help="nucleus sampling (1: off; default: the model's)")
    p.add_argument("--rerank", type=int, help="draw K candidates per image and keep the best by the re-ranker's "
                   "image-text similarity (1: off; default: the model's, when MODEL/reranker exists)")
    p.add_argument("--rerank-model", help="the contrastive re-ranker (default MODEL/reranker)")
    p.add_argument("--size", help="output size WxW: 64x64 (native), 128x128, 256x256 ... (nearest upscaling)")
    p.add_argument("--batch-size", type=int, default=64, help="images sampled together")

    def run(a: Any) -> None:
        try:
            options = ImagineOptions(n=a.n, guidance=a.guidance, temperature=a.temperature, top_k=a.top_k,
                                     top_p=a.top_p, seed=a.seed, rerank=a.rerank, batch_size=a.batch_size)
            paths = run_imagine(a.model, a.out, a.prompt, a.prompts, options, a.rerank_model, a.size)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        info = json.loads((Path(a.out) / "imagine.json").read_text())
        print(f"wrote {len(paths)} images to {a.out} ({info['images_per_second']:.1f} images/s, "
              f"{torch.get_num_threads()} threads, sampling and decoding)")

    p.set_defaults(func=run)
