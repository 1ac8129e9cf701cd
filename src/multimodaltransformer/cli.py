"""`mmt`: the command line. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError
from .data.manifest import DataError
from .data.cli import add_data_commands
from .export.cli import add_export_commands
from .imagine import add_imagine_command
from .modalities.base import MediaError


def _cmd_train(a: argparse.Namespace) -> None:
    from .train.checkpoint import list_checkpoints
    from .train.config import load_run_config
    from .train.trainer import train

    from .train.t2i import is_t2i_config, load_t2i_config, train_t2i

    if is_t2i_config(a.config):  # text-to-image: tokenizer, prior, re-ranker (train/t2i.py)
        if a.resume:
            raise ConfigError("--resume is not supported for text-to-image runs: each stage saves when it ends")
        train_t2i(load_t2i_config(a.config, a.set), a.out)
        return
    run = load_run_config(a.config, a.set)
    if not a.resume and list_checkpoints(Path(a.out) / "checkpoints"):
        raise ConfigError(f"{a.out} already holds checkpoints: pass --resume to continue, or choose another --out")
    train(run, a.out, resume=a.resume)


def _load_model(path: str, device: str, speech: bool = False, dtype: str = "f32"):
    from .hub import load_model
    from .nn.lowp import lower_precision

    return lower_precision(load_model(path, device, speech), dtype)


def _read_examples(model: Any, manifest: str | Path, skip_bad: bool, require_target: bool
                   ) -> tuple[list[Any], str, int]:
    """A manifest's examples for `predict` and, with --skip-bad, a note saying how many it skipped and
    their number: lines that failed to parse and examples whose media could not be read (both warned
    about, naming a line)."""
    from .data.manifest import read_manifest_and_skipped
    from .evaluate import readable

    examples, bad_lines = read_manifest_and_skipped(manifest, require_target, skip_bad)
    if not skip_bad:
        return examples, "", 0
    examples, bad_media = readable(model, examples, skip_bad=True)
    n = len(bad_lines) + len(bad_media)
    return examples, (f"skipped {n} example(s): {len(bad_lines)} line(s) that failed to parse, "
                      f"{len(bad_media)} whose media could not be read"), n


def _cmd_generate(a: argparse.Namespace) -> None:
    from .data.manifest import Example
    from .evaluate import predict

    model = _load_model(a.model, a.device, dtype=a.dtype)
    if a.data:
        if not a.out:
            raise ConfigError("--data needs --out PRED.jsonl")
        examples, skipped, _ = _read_examples(model, a.data, a.skip_bad, require_target=False)
        preds = predict(model, examples, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, progress=True,
                        generation_kwargs=_generation_kwargs(a))
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w") as f:
            for ex, p in zip(examples, preds):
                f.write(json.dumps({"id": ex.id, "prompt": ex.prompt, "prediction": p}) + "\n")
        tmp.replace(out)
        print(f"wrote {len(preds)} predictions to {out}" + (f"; {skipped}" if skipped else ""))
        return
    reads = list(getattr(model, "processors", None) or ({"image": 1} if model.image_processor else {}))
    media = {name: Path(p) for name, p in (("image", a.image), ("audio", a.audio), ("video", a.video)) if p}
    if a.prompt is None and "audio" not in media:
        raise ConfigError("give --prompt TEXT (with --image PATH), --audio PATH, or --data MANIFEST --out PRED.jsonl")
    if reads == ["image"] and not media:
        raise ConfigError("this model needs an image: pass --image PATH")
    if reads and not media:
        raise ConfigError(f"this model reads {' and '.join(reads)}: pass " +
                          " and/or ".join(f"--{name} PATH" for name in reads))
    for name, path in media.items():
        if name not in reads:
            raise ConfigError(f"this model has no {name} encoder (it reads {', '.join(reads) or 'text only'})")
        if not (path.is_file() or (name == "video" and path.is_dir())):
            raise MediaError(f"{name} file not found: {path}")
    ex = Example(id="cli", task="generate", prompt=a.prompt or "", target=None, text=a.text,
                 source=" ".join(f"--{n} {p}" for n, p in media.items()) or "--prompt", **media)
    if a.stream:
        if a.num_beams > 1:
            raise ConfigError("--stream prints tokens as they come: use greedy search or --do-sample, not --num-beams")
        predict(model, [ex], max_new_tokens=a.max_new_tokens, generation_kwargs=_generation_kwargs(a),
                on_text=lambda delta: print(delta, end="", flush=True))
        print()
        return
    print(predict(model, [ex], max_new_tokens=a.max_new_tokens, generation_kwargs=_generation_kwargs(a))[0])


def _generation_kwargs(a: argparse.Namespace) -> dict:
    """The decoding flags of `mmt generate` as GenerationConfig fields (validated)."""
    from .generation import GenerationConfig

    kwargs = {"num_beams": a.num_beams, "do_sample": a.do_sample, "temperature": a.temperature, "top_k": a.top_k,
              "top_p": a.top_p, "repetition_penalty": a.repetition_penalty,
              "no_repeat_ngram_size": a.no_repeat_ngram_size, "length_penalty": a.length_penalty,
              "min_new_tokens": a.min_new_tokens, "seed": a.seed}
    try:
        GenerationConfig(**kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return kwargs


def _cmd_eval(a: argparse.Namespace) -> None:
    from .data.sources import resolve_source
    from .evaluate import evaluate
    from .train.config import default_cache_dir

    if a.report == "" and not a.out:
        raise ConfigError("--report without a path writes REPORT.html next to --out REPORT.json: give one of them")
    model = _load_model(a.model, a.device, dtype=a.dtype)
    examples, skipped, n_skipped = _read_examples(model, resolve_source(a.data, default_cache_dir()), a.skip_bad,
                                                  require_target=True)
    report, preds = evaluate(model, examples, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                             progress=True)
    report = {"model": str(a.model), "data": str(a.data), **report}
    if skipped:
        report["skipped_examples"] = n_skipped
        print(f"eval: {skipped}", file=sys.stderr)  # stderr: stdout stays the JSON report
    text = json.dumps(report, indent=2)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        with out.with_suffix(".predictions.jsonl").open("w") as f:
            for ex, p in zip(examples, preds):
                if p is not None:
                    f.write(json.dumps({"id": ex.id, "task": ex.task, "prediction": p, "target": ex.target}) + "\n")
    print(text)
    if a.report is not None:
        from .report import SplitResult, write_report

        log = Path(a.model).parent / "log.jsonl"  # a run's OUT/model -> OUT/log.jsonl, when it is there
        path = write_report(a.report or Path(a.out).with_suffix(".html"),
                            {a.data: SplitResult(examples, preds, report)},
                            log_path=log if log.is_file() else None, title=f"mmt eval {a.model}")
        print(f"report: {path}", file=sys.stderr)  # stderr: stdout stays the JSON report


def _cmd_serve(a: argparse.Namespace) -> None:
    try:
        from .serve import serve
    except ImportError as e:
        raise ConfigError(f"serving needs fastapi and uvicorn: pip install 'multimodaltransformer[serve]' ({e})")
    hosts = [h.strip() for h in (a.allow_remote_media or "").split(",") if h.strip()]
    origins = [o.strip() for o in (a.cors_origins or "").split(",") if o.strip()]
    serve(a.model, host=a.host, port=a.port, api_key=a.api_key or os.environ.get("MMT_API_KEY") or None,
          allow_remote_media=hosts, max_batch=a.max_batch, queue_size=a.queue_size, request_timeout_s=a.timeout,
          device=a.device, drain_timeout_s=a.drain_timeout, cors_origins=origins, access_log=a.access_log,
          dtype=a.dtype)


def _cmd_bench_fusion(a: argparse.Namespace) -> None:
    from .bench import run_fusion_bench

    methods = [m.strip() for m in a.methods.split(";")] if a.methods else None
    run_fusion_bench(a.out, minutes=a.minutes, methods=methods, config=a.config, overrides=a.set,
                     eval_n=a.eval_n, eval_seed=a.eval_seed)


def _cmd_bench_video(a: argparse.Namespace) -> None:
    from .bench import run_video_bench

    attentions = tuple(x.strip() for x in a.encoders.split(","))
    if bad := [x for x in attentions if x not in ("divided", "mean")]:
        raise ConfigError(f"--encoders: unknown {bad}; choose from divided, mean")
    run_video_bench(a.out, minutes=a.minutes, attentions=attentions, config=a.config, overrides=a.set,
                    eval_n=a.eval_n, eval_seed=a.eval_seed)


def _cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo, run_t2i_demo

    if a.recipe == "t2i":
        run_t2i_demo(a.out or "runs/demo-t2i", budget_minutes=a.budget_minutes, config=a.config, overrides=a.set,
                     serve=not a.no_serve, port=a.port)
        return
    run_demo(a.out or ("runs/demo" if a.recipe == "image" else f"runs/demo-{a.recipe}"), budget_minutes=a.budget_minutes, config=a.config, overrides=a.set, serve=not a.no_serve,
             eval_n=a.eval_n, eval_seed=a.eval_seed, port=a.port, recipe=a.recipe)


def _cmd_convert(a: argparse.Namespace) -> None:
    from .hub import convert

    print(f"wrote {convert(a.path, a.out)}")


def _cmd_classify(a: argparse.Namespace) -> None:
    from .classify import classify_file, format_predictions

    predictions = classify_file(a.model, a.image, k=a.top, task=a.task, prompt=a.prompt, device=a.device)
    print(format_predictions(predictions, as_json=a.json))


def _cmd_chat(a: argparse.Namespace) -> None:
    import torch

    from .chat import SamplingOptions, run_terminal_chat
    from .hub import load_pretrained

    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    options = SamplingOptions(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, seed=a.seed)
    from .nn.lowp import lower_precision

    model = lower_precision(load_pretrained(a.model, map_location=device), a.dtype)
    run_terminal_chat(model, a.system, options, image=a.image)


def _bench_args(p: argparse.ArgumentParser, config: str, per: str, eval_n: int, unit: str,
                out: str | None = None) -> None:
    """What every `mmt bench` shares: where, how long each run trains, the config, the held-out set."""
    p.add_argument("--out", default=out or f"runs/{config}")
    p.add_argument("--minutes", type=float, default=3.0, help=f"training wall time per {per}")
    p.add_argument("--config", default=config, help="YAML file or packaged config name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--eval-n", type=int, default=eval_n, help=f"test {unit} to score")
    p.add_argument("--eval-seed", type=int, default=1)


def _dtype_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dtype", choices=["f32", "bf16", "int8"], default="f32",
                    help="weights of the Linear layers for decoding (nn/lowp.py): f32 (default: on this project's "
                         "2-core CPU bf16 decodes slower and int8 only 1.3x faster at batch 1, see "
                         "benchmarks/README.md), bf16, or int8 weight-only per-channel")


def _model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("model", help="a saved model directory (config.json + model.safetensors + tokenizer.json)")
    sp.add_argument("--max-new-tokens", type=int, default=48)
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    _dtype_arg(sp)
    sp.add_argument("--skip-bad", action="store_true",
                    help="skip and count bad manifest lines and examples whose media cannot be read")


def _add_generate_command(sub: Any) -> None:
    g = sub.add_parser("generate", help="answer one prompt, or every line of a manifest")
    _model_args(g)
    g.add_argument("--image")
    g.add_argument("--audio", help="a speech clip (WAV; FLAC, OGG ... with soundfile) for models with an audio encoder")
    g.add_argument("--video", help="a clip (MP4, WebM, AVI, GIF, animated PNG ..., or a folder of frames) for models "
                   "with a video encoder")
    g.add_argument("--prompt", help="the text prompt (with --audio it may be left out: a transcript or a spoken question)")
    g.add_argument("--text", help="optional input text placed before the prompt")
    g.add_argument("--data", help="manifest.jsonl to predict")
    g.add_argument("--out", help="predictions JSONL (with --data)")
    g.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: greedy / sampling)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set with this probability")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, help="no n-gram of this size occurs twice")
    g.add_argument("--length-penalty", type=float, default=1.0, help="beams: score / length ** this")
    g.add_argument("--min-new-tokens", type=int, default=0, help="no EOS before this many new tokens")
    g.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")
    g.add_argument("--stream", action="store_true", help="print the answer to --prompt as it is generated")
    g.set_defaults(func=_cmd_generate)


def _add_run_commands(sub: Any) -> None:
    """eval, serve, bench, demo."""
    e = sub.add_parser("eval", help="score a model on a manifest, per task")
    _model_args(e)
    e.add_argument("--data", required=True, help="manifest.jsonl (or a built-in spec like shapes:split=test,n=500)")
    e.add_argument("--out", help="REPORT.json (predictions go next to it, REPORT.predictions.jsonl)")
    e.add_argument("--report", nargs="?", const="", metavar="PATH",
                   help="also write a self-contained HTML page of metrics, charts and predicted images "
                        "(default PATH: REPORT.html next to --out)")
    e.set_defaults(func=_cmd_eval)

    sv = sub.add_parser("serve", help="serve a model: OpenAI-compatible API (chat with images or, for Whisper, "
                                      "audio; streaming) + web chat page")
    sv.add_argument("model", help="a saved model directory (ours, or a Whisper one: it transcribes input_audio), "
                                  "or a decoder LM with a chat template (directory, .gguf or package:NAME): text chat")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health and the chat "
                                      "page (default: $MMT_API_KEY, else none)")
    sv.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                    help="on SIGTERM/Ctrl-C: answer new requests 503 and let running streams finish for up to S "
                         "seconds, then end them with an error event (a second signal stops at once)")
    sv.add_argument("--cors-origins", metavar="ORIGINS",
                    help="comma-separated origins whose browser pages may call the API (default: none, CORS off)")
    sv.add_argument("--access-log", default="-", metavar="PATH",
                    help="one JSON line per request: '-' stderr (default), a file path, or 'off'")
    sv.add_argument("--allow-remote-media", metavar="HOSTS",
                    help="comma-separated hosts whose http(s) image URLs may be fetched (default: data: URLs only)")
    sv.add_argument("--max-batch", type=int, default=16, help="rows decoded together (1: no batching)")
    sv.add_argument("--queue-size", type=int, default=64, help="requests waiting beyond it get 429")
    sv.add_argument("--timeout", type=float, default=120.0, help="per-request time limit in seconds")
    sv.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    _dtype_arg(sv)
    sv.set_defaults(func=_cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    bf = bench.add_parser("fusion", help="every fusion method (and single- vs multi-task) under one budget")
    _bench_args(bf, "bench-fusion", "method", eval_n=300, unit="images")
    bf.add_argument("--methods", help="';'-separated subset, e.g. 'early;cross;late' (default: all)")
    bf.set_defaults(func=_cmd_bench_fusion)
    bv = bench.add_parser("video", help="divided space-time attention vs the frame mean on MovingShapes, same budget")
    _bench_args(bv, "video", "encoder", eval_n=150, unit="clips", out="runs/bench-video")
    bv.add_argument("--encoders", default="divided,mean", help="comma-separated: divided, mean")
    bv.set_defaults(func=_cmd_bench_video)

    d = sub.add_parser("demo", help="generate ShapesWorld (SpokenShapes, MovingShapes), train, evaluate, show predictions")
    d.add_argument("recipe", nargs="?", choices=["image", "speech", "video", "t2i"], default="image",
                   help="image: captions, VQA ... on ShapesWorld (default); speech: ASR and spoken VQA on SpokenShapes; "
                   "video: video captions and video QA on MovingShapes; t2i: text-to-image (VQ-VAE + prior) on ShapesWorld")
    d.add_argument("--out", help="where the run goes (default runs/demo, or runs/demo-speech, runs/demo-video)")
    d.add_argument("--budget-minutes", type=float, default=9.0, help="training wall-time budget")
    d.add_argument("--config", help="YAML file or packaged config name (default: the recipe's, demo, speech or video)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--eval-n", type=int, default=500, help="test / novel images to evaluate")
    d.add_argument("--eval-seed", type=int, default=1)
    d.add_argument("--no-serve", action="store_true", help="stop after evaluation instead of serving the model")
    d.add_argument("--port", type=int, default=8000, help="where to serve the model (another free one if taken)")
    d.set_defaults(func=_cmd_demo)


def _add_model_commands(sub: Any) -> None:
    """convert, classify, chat."""
    c = sub.add_parser("convert", help="write a Hugging Face (gpt2, bert, vit, clip, whisper, llama, resnet), GGUF "
                       "(llama) or saved checkpoint in this library's format")
    c.add_argument("path", help="a directory with config.json + model.safetensors (or pytorch_model.bin), "
                   "a .gguf file, or an EfficientNet-Lite .pth state dict")
    c.add_argument("out", help="output directory (config.json + model.safetensors + tokenizer.json)")
    c.set_defaults(func=_cmd_convert)

    k = sub.add_parser("classify", help="the top classes of an image, by a model with a classification head")
    k.add_argument("model", help="a model directory: converted EfficientNet or ResNet, or one trained here "
                   "with classification heads")
    k.add_argument("--image", required=True, help="the image file")
    k.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    k.add_argument("--json", action="store_true", help="one JSON list [{index, label, score}] on stdout")
    k.add_argument("--task", help="which classification head, for a model with several")
    k.add_argument("--prompt", help="the text a multimodal model's head reads with the image "
                   "(default: ShapesWorld's classify prompt)")
    k.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    k.set_defaults(func=_cmd_classify)

    ch = sub.add_parser("chat", help="chat in the terminal with a decoder LM that has a chat template")
    ch.add_argument("model", help="a .gguf file (llama family), a Hugging Face directory or a converted one")
    ch.add_argument("--image", help="talk about this picture (a model trained or composed by this library)")
    _dtype_arg(ch)
    ch.add_argument("--system", help="system message")
    ch.add_argument("--max-new-tokens", type=int, default=256)
    ch.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples (with --top-p)")
    ch.add_argument("--top-p", type=float, default=0.9)
    ch.add_argument("--seed", type=int)
    ch.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    ch.set_defaults(func=_cmd_chat)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmt", description="multimodaltransformer: train, evaluate and run "
                                "multimodal Transformers")
    sub = p.add_subparsers(dest="command", required=True)
    add_data_commands(sub)
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML file, or the name of a packaged config (shapes-tiny, demo, speech)")
    t.add_argument("--out", required=True)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    t.set_defaults(func=_cmd_train)
    _add_generate_command(sub)
    _add_run_commands(sub)
    _add_model_commands(sub)
    add_export_commands(sub)  # mmt export, mmt generate --backend onnxruntime
    add_imagine_command(sub)  # mmt imagine (imagine.py)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, MediaError, FileNotFoundError) as e:
        print(f"mmt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
