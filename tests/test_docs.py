"""The tutorial under docs/: both languages have the same pages, and every ```python block runs."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_run", ROOT / "docs" / "run.py")
docs_run = importlib.util.module_from_spec(spec)
sys.modules["docs_run"] = docs_run
spec.loader.exec_module(docs_run)


def test_block_extraction_keeps_order_and_skips_other_fences():
    text = "# t\n```python\na = 1\n```\n\n```bash\nmmt demo\n```\n```python-norun\nboom()\n```\n```python\nb = a\n```\n"
    blocks = docs_run.python_blocks(text)
    assert [code for _, code in blocks] == ["a = 1\n", "b = a\n"]
    assert [line for line, _ in blocks] == [3, 13]


def test_every_language_has_the_same_nine_or_more_pages():
    names = {lang: [p.name for p in docs_run.pages(lang)] for lang in docs_run.LANGUAGES}
    assert len(names["en"]) >= 9, names
    assert names["en"] == names["zh"], names
    for page in docs_run.pages():
        assert docs_run.python_blocks(page.read_text("utf-8")), f"{page} has no python block"


def test_readme_indexes_every_page():
    readme = (ROOT / "README.md").read_text("utf-8")
    linked = set(re.findall(r"\]\((docs/(?:en|zh)/[^)]+\.md)\)", readme))
    expected = {str(p.relative_to(ROOT)) for p in docs_run.pages()}
    assert expected <= linked, sorted(expected - linked)


def test_a_failing_block_fails_the_page(tmp_path):
    page = tmp_path / "01-bad.md"
    page.write_text("```python\nx = 1\n```\ntext\n```python\nassert x == 2, 'caught'\n```\n", "utf-8")
    run = docs_run.run_page(page, tmp_path / "work", timeout=60)
    assert run.returncode != 0 and "caught" in run.output and f"{page}\", line 6" in run.output


@pytest.mark.slow
@pytest.mark.parametrize("page", docs_run.pages(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_page_runs(page, tmp_path):
    run = docs_run.run_page(page, tmp_path, timeout=300)
    assert run.returncode == 0, run.output[-6000:]
