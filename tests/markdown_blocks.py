"""The fenced code blocks of the project's Markdown, for tests that run what the docs show."""

from __future__ import annotations

import re
from pathlib import Path


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced code block of a Markdown file, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return [text for language, text in fenced_blocks(path) if language == "python"]
