"""A reader for the block-style YAML that deploy/kubernetes.yaml and deploy/docker-compose.yml
are written in, so tests can check their fields without PyYAML (not in the locks; kanal adds
no dependency for a test).

It reads a strict subset and refuses everything else with :class:`YamlSubsetError`, so it
never guesses what a file means: block mappings and sequences by indentation (spaces only),
``---`` between documents, ``#`` comments, and scalars that are double-quoted (JSON escapes),
single-quoted, plain words, integers, floats, ``true``/``false`` and ``null``, or a flow
``[...]`` / ``{...}`` that is valid JSON. Not: anchors, aliases, tags, block scalars
(``|``, ``>``), multi-line plain scalars, complex keys. Within the subset the values are
YAML 1.2's (core schema); tests/test_deploy_files.py compares them with PyYAML's whenever
PyYAML can be imported.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["YamlSubsetError", "load_all"]

_KEY = re.compile(r"""^(?P<key>[A-Za-z0-9_./-]+|"[^"]*"|'[^']*'):(?: (?P<rest>.*))?$""")
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_SPECIAL: dict[str, bool | None] = {"true": True, "True": True, "TRUE": True, "~": None}
_SPECIAL |= {"false": False, "False": False, "FALSE": False, "null": None, "Null": None}
_SPECIAL |= {"NULL": None}
# Plain scalars that YAML 1.1 (PyYAML, parts of Kubernetes' and Compose's readers) and YAML 1.2
# read differently: yes/no/on/off booleans, octal 010, sexagesimal 6001:6001, 1_000. Quote them.
_AMBIGUOUS = re.compile(
    r"(?i:y|n|yes|no|on|off)|[-+]?0[0-9_]+|[-+]?[0-9][0-9_]*(:[0-9_]+)+|.*[0-9]_[0-9].*"
)


class YamlSubsetError(ValueError):
    """Text outside the subset this reader understands (or not YAML at all)."""


Line = tuple[int, int, str]  # (line number, indentation, content without the comment)


def _without_comment(text: str, number: int) -> str:
    """``text`` up to a ``#`` that starts a comment (at the start, or after a blank)."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'" and (i == 0 or text[i - 1] in " [{,:-"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    if quote:
        raise YamlSubsetError(f"line {number}: unterminated quote")
    return text.rstrip()


def _lines(text: str) -> list[list[Line]]:
    documents: list[list[Line]] = [[]]
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise YamlSubsetError(f"line {number}: tab")
        content = _without_comment(raw, number)
        if content == "---":
            documents.append([])
        elif content.strip():
            indent = len(content) - len(content.lstrip(" "))
            documents[-1].append((number, indent, content.strip()))
    return [lines for lines in documents if lines]


def scalar(text: str, number: int = 0) -> Any:
    """One scalar (or JSON flow collection) of the subset."""
    if text[0] == '"' or text[0] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            message = f"line {number}: not a JSON string or collection: {text}"
            raise YamlSubsetError(message) from None
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'" or "'" in text[1:-1].replace("''", ""):
            raise YamlSubsetError(f"line {number}: bad single-quoted string: {text}")
        return text[1:-1].replace("''", "'")
    if text[0] in "&*!|>%@`?" or ": " in text or text.endswith(":"):
        raise YamlSubsetError(f"line {number}: outside the subset: {text}")
    if _AMBIGUOUS.fullmatch(text):
        raise YamlSubsetError(f"line {number}: YAML 1.1 and 1.2 read this differently: {text}")
    if text in _SPECIAL:
        return _SPECIAL[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class _Reader:
    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines
        self.at = 0

    def node(self, indent: int) -> Any:
        _, _, content = self.lines[self.at]
        return self.sequence(indent) if _is_item(content) else self.mapping(indent)

    def mapping(self, indent: int) -> dict[Any, Any]:
        found: dict[Any, Any] = {}
        while self.at < len(self.lines):
            number, column, content = self.lines[self.at]
            if column < indent or (column == indent and _is_item(content)):
                break  # the parent's next entry, or the parent's sequence goes on
            match = _KEY.match(content)
            if column > indent or match is None:
                raise YamlSubsetError(f"line {number}: expected a key at column {indent}")
            key = scalar(match["key"], number)
            if key in found:
                raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
            self.at += 1
            rest = match["rest"]
            found[key] = scalar(rest, number) if rest else self.block(indent)
        return found

    def block(self, parent: int) -> Any:
        """The value of a key with nothing after its colon: a deeper block, or a sequence at
        the key's own column (``key:`` then ``- item``), else null."""
        if self.at < len(self.lines):
            _, column, content = self.lines[self.at]
            if column > parent or (column == parent and _is_item(content)):
                return self.node(column)
        return None

    def sequence(self, indent: int) -> list[Any]:
        found: list[Any] = []
        while self.at < len(self.lines):
            number, column, content = self.lines[self.at]
            if column != indent or not _is_item(content):
                if column > indent:
                    raise YamlSubsetError(f"line {number}: unexpected indentation")
                break
            item = content[1:].lstrip(" ")
            if not item:
                self.at += 1
                found.append(self.block(indent + 1))
            elif _KEY.match(item):  # "- key: value" opens a mapping at the item's column
                self.lines[self.at] = (number, indent + len(content) - len(item), item)
                found.append(self.mapping(self.lines[self.at][1]))
            else:
                self.at += 1
                found.append(scalar(item, number))
        return found


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def load_all(text: str) -> list[Any]:
    """Every document of ``text``, as PyYAML's ``safe_load_all`` would return them.

    Raises:
        YamlSubsetError: ``text`` is outside the subset.
    """
    documents = []
    for lines in _lines(text):
        reader = _Reader(lines)
        documents.append(reader.node(lines[0][1]))
        if reader.at != len(lines):
            number = lines[reader.at][0]
            raise YamlSubsetError(f"line {number}: unexpected indentation")
    return documents
