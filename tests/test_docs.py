"""The quickstart and estimator pages run as written (with the tiny backbone in place of the default)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
DEFAULT_LINE = 'backbone = "smollm2-135m"'


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


RUNNABLE_PAGES = [DOCS / "quickstart.md", DOCS / "generation.md", *sorted((DOCS / "estimators").glob("*.md"))]


@pytest.mark.parametrize("page", [str(p.relative_to(DOCS)) for p in RUNNABLE_PAGES])
def test_code_blocks_run_in_order(page, monkeypatch, tmp_path):
    path = DOCS / page
    source = "\n".join(_python_blocks(path))
    if DEFAULT_LINE in source:
        source = source.replace(DEFAULT_LINE, 'backbone = "tiny-llama"')
    monkeypatch.chdir(tmp_path)
    exec(compile(source, str(path), "exec"), {"__name__": "__docs__"})
