"""A self-contained HTML page of a model's held-out predictions: metrics, charts, curves, images.

`write_report(path, {"test": SplitResult(...), ...}, log_path=...)` writes one HTML file with every
image and chart inline (base64 data URLs; no external CSS, JS or fonts), so it can be mailed or
attached to an issue as is. Per split: headline metrics and a grid of images with the model's
answer to each of their examples, right in green, wrong in red beside the expected answer (both
compared after `normalize_answer`). Charts (VQA accuracy per question type, the other task
metrics, the training / validation curves of a run's log.jsonl) need matplotlib, imported here
only when a report is written; without it the page says how to get them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data.manifest import Example
from .metrics import normalize_answer
from .train.tracking import LOG_FILE, TENSORBOARD_DIR

HEADLINE = ("vqa_accuracy", "video_qa_accuracy", "asr_wer", "caption_exact_match", "video_caption_exact_match",
            "caption_bleu4", "caption_cider", "classify_accuracy", "match_accuracy", "retrieval_r1")
KNOWN_SPLITS = {"test": "held-out images", "novel": "unseen colour-shape pairs"}  # ShapesWorld's eval splits
MAX_SIDE = 256  # larger images are shrunk before inlining, so a report of photos stays a few MB
NO_CHARTS = "Charts need matplotlib: <code>pip install matplotlib</code> adds them."


@dataclass
class SplitResult:
    """One evaluated split: its examples, the predictions `evaluate` returned for them (None where
    it made none, e.g. retrieval pairs) and its metrics dict."""
    examples: Sequence[Example]
    predictions: Sequence[str | None]
    metrics: Mapping[str, Any]
    description: str = ""  # shown under the split's name; defaults to KNOWN_SPLITS

    def __post_init__(self) -> None:
        if len(self.examples) != len(self.predictions):
            raise ValueError(f"{len(self.examples)} examples but {len(self.predictions)} predictions")


@dataclass
class Answer:
    """One example's line on an image card: its prompt (with the text it asks about), prediction, target."""
    task: str
    prompt: str
    prediction: str
    target: str | None

    @property
    def right(self) -> bool:
        return self.target is not None and normalize_answer(self.prediction) == normalize_answer(self.target)


def image_cards(split: SplitResult, images: int) -> list[tuple[Path | bytes, list[Answer]]]:
    """The first `images` distinct images (or videos, as a strip of frames) of the split that have
    predictions, each with its answers."""
    cards: dict[Any, list[Answer]] = {}
    for ex, pred in zip(split.examples, split.predictions):
        media = ex.image if ex.image is not None else ex.video
        if pred is None or media is None:
            continue
        key = media if isinstance(media, Path) else bytes(media)
        if key not in cards and len(cards) == images:
            continue
        prompt = f"{ex.prompt} “{ex.text}”" if ex.text else ex.prompt
        cards.setdefault(key, []).append(Answer(ex.task, prompt, pred, ex.target))
    videos = {str(ex.video) for ex in split.examples if ex.image is None and ex.video is not None}
    return [(frame_strip(key) if str(key) in videos else key, answers) for key, answers in cards.items()]


def frame_strip(video: Path | bytes, frames: int = 4) -> bytes:
    """A video as one PNG of `frames` frames side by side, first to last (b"" if unreadable)."""
    from .modalities.base import MediaError
    from .modalities.video import load_video, sample_indices

    try:
        clip = load_video(video)
    except MediaError:
        return b""
    strip = np.concatenate([clip[i] for i in sample_indices(len(clip), frames)], axis=1)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- the page


def write_report(path: str | Path, splits: Mapping[str, SplitResult], log_path: str | Path | None = None,
                 title: str = "Model report", images: int = 24) -> Path:
    """Write the HTML report of `splits` (name -> SplitResult) to `path`; with `log_path`, a run's
    log.jsonl, its training and validation curves too. Returns the path written."""
    try:
        import matplotlib  # noqa: F401  (only to know whether charts can be drawn)
        charts = True
    except ImportError:
        charts = False
    parts = [f"<h1>{_e(title)}</h1>"] + ([] if charts else [f"<p class='note'>{NO_CHARTS}</p>"])
    parts.append(_metrics_section(splits, charts))
    if log_path is not None:
        parts.append(_curves_section(Path(log_path), charts))
    parts += [_split_section(name, s, images) for name, s in splits.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_PAGE.format(title=_e(title), style=_STYLE, body="\n".join(parts)), encoding="utf-8")
    return path


def write_run_report(out: str | Path, splits: Mapping[str, SplitResult], title: str | None = None) -> Path:
    """A training run's report: OUT/report.html with the curves of OUT/log.jsonl, and the first split's
    first images with their answers as an image in OUT/tensorboard/ (when tensorboard is installed)."""
    out = Path(out)
    log = out / LOG_FILE
    path = write_report(out / "report.html", splits, log if log.is_file() else None,
                        title=title or f"{out}: held-out predictions")
    if splits:  # at the run's last step, so the image sits beside the final scalars
        step = max((int(r["step"]) for r in read_log(log)), default=0) if log.is_file() else 0
        name, first = next(iter(splits.items()))
        log_predictions_to_tensorboard(out / TENSORBOARD_DIR, first, step=step, tag=f"predictions/{name}")
    return path


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def _is_fraction(key: str) -> bool:
    """Metrics on a 0-1 scale that share one bar chart (BLEU is 0-100 and CIDEr 0-10: table only)."""
    return key.endswith(("_accuracy", "_exact_match")) or key == "retrieval_r1"


def _metrics_section(splits: Mapping[str, SplitResult], charts: bool) -> str:
    scalars = {name: _scalars(s.metrics) for name, s in splits.items()}
    rank = {k: i for i, k in enumerate(HEADLINE)}
    keys = sorted({k for m in scalars.values() for k in m}, key=lambda k: (rank.get(k, len(rank)), k))
    if not keys:
        return ""
    head = "".join(f"<th>{_e(n)}</th>" for n in splits)
    rows = "".join(f"<tr><td>{_e(k)}</td>" + "".join(
        f"<td>{_fmt(m[k])}</td>" if k in m else "<td>–</td>" for m in scalars.values()) + "</tr>" for k in keys)
    html_ = [f"<section><h2>Metrics</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>"]
    if charts:
        by_type = {n: s.metrics.get("vqa_accuracy_by_type") or s.metrics.get("video_qa_accuracy_by_type") or {}
                   for n, s in splits.items()}
        types = sorted({t for m in by_type.values() for t in m})
        if types:
            html_.append(_img(_bars(types, {n: [m.get(t) for t in types] for n, m in by_type.items()},
                                    "VQA accuracy per question type"), "VQA accuracy per question type"))
        tasks = [k for k in keys if _is_fraction(k)]
        if tasks:
            html_.append(_img(_bars(tasks, {n: [m.get(k) for k in tasks] for n, m in scalars.items()},
                                    "task metrics"), "task metrics"))
    return "".join(html_) + "</section>"


def _split_section(name: str, split: SplitResult, images: int) -> str:
    cards = image_cards(split, images)
    answers = [a for _, ans in cards for a in ans]
    right = sum(a.right for a in answers)
    note = split.description or KNOWN_SPLITS.get(name, "")
    scalars = _scalars(split.metrics)
    stats = "".join(f"<div class='stat'><b>{_fmt(scalars[k])}</b>{_e(k)}</div>" for k in HEADLINE if k in scalars)
    counts = split.metrics.get("count") or {}
    count = ", ".join(f"{_e(t)} {_e(n)}" for t, n in counts.items()) if isinstance(counts, Mapping) else ""
    grid = "".join(_card(image, ans) for image, ans in cards)
    return (f"<section><h2>{_e(name)}</h2>" + (f"<p class='note'>{_e(note)}</p>" if note else "")
            + f"<div class='stats'>{stats}</div>" + (f"<p class='note'>examples scored: {count}</p>" if count else "")
            + f"<p class='note'>{len(cards)} images shown, {right} of {len(answers)} of their answers right</p>"
            + f"<div class='grid'>{grid}</div></section>")


def _card(image: Path | bytes, answers: list[Answer]) -> str:
    url = image_data_url(image)
    name = image.name if isinstance(image, Path) else "(image bytes)"
    img = f"<img src='{url}' alt='{_e(name)}'>" if url else "<div class='missing'>image unreadable</div>"
    rows = []
    for a in answers:
        want = "" if a.right or a.target is None else f" <span class='want'>(want: {_e(a.target)})</span>"
        rows.append(f"<li><span class='task'>{_e(a.task)}</span> <span class='q'>{_e(a.prompt)}</span> "
                    f"<span class='{'ok' if a.right else 'bad'}'>{_e(a.prediction) or '(empty)'}</span>{want}</li>")
    return f"<figure>{img}<figcaption>{_e(name)}</figcaption><ul>{''.join(rows)}</ul></figure>"


def image_data_url(image: Path | bytes, max_side: int = MAX_SIDE) -> str | None:
    """The image as a data: URL (None if it cannot be read); larger than `max_side` pixels: shrunk first."""

    try:
        data = image.read_bytes() if isinstance(image, Path) else bytes(image)
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").upper()
            if fmt not in ("PNG", "JPEG", "GIF", "WEBP") or max(im.size) > max_side:
                im = im.convert("RGB") if im.mode not in ("RGB", "RGBA", "L") else im
                im.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                fmt = "JPEG" if fmt == "JPEG" else "PNG"
                im.save(buf, format=fmt)
                data = buf.getvalue()
    except (OSError, ValueError):  # missing file, not an image, truncated
        return None
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(data).decode('ascii')}"


# ----------------------------------------------------------------------------- curves


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl; unparsable lines (a killed run's last one) are skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), numbers.Real):
            records.append(row)
    return records


def _series(records: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, list[tuple[float, float]]]]]:
    """(chart title, {line name: [(step, value)]}) for the training loss per task, the validation
    losses and the validation metrics on a 0-1 scale."""
    train: dict[str, list] = {}
    val_loss: dict[str, list] = {}
    val_metrics: dict[str, list] = {}
    for r in records:
        step, scalars = r["step"], _scalars(r)
        if any(k.startswith("val_") for k in r):
            for k, v in scalars.items():
                if k.startswith("val_loss"):
                    val_loss.setdefault(k, []).append((step, v))
                elif _is_fraction(k):
                    val_metrics.setdefault(k, []).append((step, v))
        elif "loss" in scalars:
            train.setdefault(str(r.get("task") or "loss"), []).append((step, scalars["loss"]))
    for title, lines in (("training loss per task", train), ("validation loss", val_loss),
                         ("validation metrics", val_metrics)):
        if lines:
            yield title, lines


def _curves_section(log_path: Path, charts: bool) -> str:
    records = read_log(log_path) if log_path.is_file() else []
    if not records:
        return f"<section><h2>Training</h2><p class='note'>no training log at {_e(log_path)}</p></section>"
    if not charts:
        return f"<section><h2>Training</h2><p class='note'>{len(records)} records; {NO_CHARTS}</p></section>"
    imgs = "".join(_img(_lines(lines, title), title) for title, lines in _series(records))
    return (f"<section><h2>Training</h2><p class='note'>from {_e(log_path)}</p>"
            f"<div class='charts'>{imgs}</div></section>")


# ----------------------------------------------------------------------------- matplotlib


def _figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch in the caller's process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _img(url: str, alt: str) -> str:
    return f"<img class='chart' src='{url}' alt='{_e(alt)}'>"


def _bars(groups: list[str], series: Mapping[str, list[float | None]], title: str) -> str:
    """Grouped bars on a 0-1 scale: one group per x label, one bar per split (side by side)."""
    fig = _figure(max(4.0, 0.5 * len(groups) * len(series) + 2.0), 3.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v is not None else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0, ha="right" if
                  len(groups) > 4 else "center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def _lines(lines: Mapping[str, list[tuple[float, float]]], title: str) -> str:
    fig = _figure(5.0, 3.2)
    ax = fig.add_subplot()
    for name, points in lines.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)


# ----------------------------------------------------------------------------- TensorBoard


def log_predictions_to_tensorboard(log_dir: str | Path, split: SplitResult, images: int = 8, step: int = 0,
                                   tag: str = "predictions") -> bool:
    """The split's first `images` images with their answers (right green, wrong red with the expected
    one) as one image in the TensorBoard run at `log_dir`. False when tensorboard or matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is not installed
    except ImportError:
        return False

    cards = image_cards(split, images)
    if not cards:
        return False
    cols = min(4, len(cards))
    rows = -(-len(cards) // cols)
    side, text = 2.6, 0.9  # inches per image and below it for up to 5 answer lines
    height = rows * (side + text)
    fig = _figure(3.3 * cols, height, layout=None)  # constrained layout ignores the text under the axes
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.05 / height, bottom=text / height, wspace=0.1,
                        hspace=text / side)
    for i, (image, answers) in enumerate(cards):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        try:
            with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
        except (OSError, ValueError):
            continue
        for j, a in enumerate(answers[:5]):  # text below the image, one line per answer
            want = "" if a.right or a.target is None else f" (want: {a.target})"
            ax.annotate(_short(f"{a.prompt} -> {a.prediction}{want}"), (0, 0), xycoords="axes fraction",
                        xytext=(0, -4 - 11 * j), textcoords="offset points", fontsize=6.5, va="top",
                        color="#1a7f37" if a.right else "#cf222e")
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_image(tag, pixels, step, dataformats="HWC")
    return True


def _short(text: str, n: int = 56) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}td,th{border:1px solid #d0d7de;padding:3px 10px}
td:not(:first-child){text-align:right}.note{color:#656d76}.chart{max-width:100%;margin:8px 16px 8px 0}
.stats{display:flex;flex-wrap:wrap;gap:10px}.stat{border:1px solid #d0d7de;border-radius:6px;padding:6px 12px}
.stat b{display:block;font-size:20px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:8px}
figure img{width:192px;height:auto;image-rendering:pixelated;display:block}
figcaption{font-size:11px;color:#656d76}ul{list-style:none;padding:0;margin:6px 0 0}li{margin:3px 0}
.task{font-size:11px;background:#eaeef2;border-radius:4px;padding:0 4px}.q{color:#424a53}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.want{color:#656d76}
.missing{width:192px;height:192px;background:#eaeef2;display:flex;align-items:center;justify-content:center}
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body>
{body}
</body></html>
"""
