"""The README's "Using it" examples run as written (each block in a fresh namespace)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def using_it_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_examples():
    assert len(using_it_blocks()) >= 4


@pytest.mark.parametrize("i", range(len(using_it_blocks())))
def test_readme_example_runs(i, capsys):
    code = using_it_blocks()[i]
    exec(compile(code, f"README.md[block {i}]", "exec"), {"__name__": "readme"})
