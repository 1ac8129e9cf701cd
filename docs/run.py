"""Run the tutorial's code: every ```python block of a page, in order, as one script in a fresh process.

    python docs/run.py                    # every page under docs/en and docs/zh, with a timing table
    python docs/run.py docs/en/01-attention.md --keep /tmp/page   # one page; keep its working folder

Each page runs in its own empty working folder (files it writes stay out of the repository) with the
interpreter that runs this file, so `.venv/bin/python docs/run.py` checks the pages as a reader runs them.
tests/test_docs.py runs the same function on every page.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
LANGUAGES = ("en", "zh")
# a fence that opens a block we run: exactly ```python (```text, ```bash and ```python-norun are shown only)
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def pages(language: str | None = None) -> list[Path]:
    langs = [language] if language else LANGUAGES
    return [p for lang in langs for p in sorted((DOCS / lang).glob("[0-9][0-9]-*.md"))]


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block, in page order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def page_script(page: Path) -> tuple[str, dict[int, int]]:
    """The page's blocks as one script, and a map from the script's line numbers to the page's."""
    lines, where = [], {}
    for first, code in python_blocks(page.read_text("utf-8")):
        for k, line in enumerate(code.splitlines()):
            lines.append(line)
            where[len(lines)] = first + k
        lines.append("")
    return "\n".join(lines) + "\n", where


def _point_at_page(output: str, page: Path, where: dict[int, int]) -> str:
    """Rewrite traceback frames of the script into the page's own file and line."""
    return re.sub(r'File "[^"]*page\.py", line (\d+)',
                  lambda m: f'File "{page}", line {where.get(int(m.group(1)), "?")}', output)


@dataclass
class PageRun:
    page: Path
    seconds: float
    returncode: int
    output: str


def run_page(page: Path, workdir: Path, timeout: float = 600.0) -> PageRun:
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "page.py"
    source, where = page_script(page)
    script.write_text(source, "utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", TQDM_DISABLE="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = -9, f"timed out after {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
    return PageRun(page, time.perf_counter() - start, code, _point_at_page(out, page, where))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pages", nargs="*", type=Path, help="pages to run (default: all)")
    ap.add_argument("--keep", type=Path, help="working folder to keep (one page) or its parent (several)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each page's output")
    args = ap.parse_args(argv)
    todo = [p.resolve() for p in args.pages] or pages()
    failed, total = 0, 0.0
    print(f"| page | blocks | seconds | result |\n|---|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="mmt-docs-") as tmp:
        for page in todo:
            root = args.keep or Path(tmp)
            work = root if args.keep and len(todo) == 1 else root / f"{page.parent.name}-{page.stem}"
            run = run_page(page, work)
            total += run.seconds
            ok = run.returncode == 0
            failed += not ok
            rel = page.relative_to(DOCS.parent) if page.is_relative_to(DOCS.parent) else page
            print(f"| {rel} | {len(python_blocks(page.read_text('utf-8')))} | {run.seconds:.1f} | "
                  f"{'ok' if ok else f'FAILED ({run.returncode})'} |", flush=True)
            if args.verbose or not ok:
                print(run.output[-4000:], file=sys.stderr)
    print(f"\n{len(todo)} pages, {failed} failed, {total:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
