"""Render our docstrings' ``Example:`` sections as doctest code (docs build only).

Griffe's Google parser turns ``Examples:`` into code blocks but ``Example:`` into an
admonition, whose ``>>>`` lines Markdown then reads as nested quotes. The source keeps the
project's ``Example:`` spelling (STYLE.md); the reference reads it as ``Examples:``.
"""

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` before docstrings are parsed."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
