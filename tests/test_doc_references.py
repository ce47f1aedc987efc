"""Citations and links in the repository point at things that exist (docs/reference/README.md).

* Every citation ``docs/reference/<page>.md §N.M`` (inside ``docs/`` also ``reference/<page>.md
  §N.M``; in code and inside ``docs/reference/`` also the bare ``<page>.md §N.M``) names an
  existing page and a heading numbered exactly ``N.M``. Ranges (``§3-6``) and lists
  (``§2, §7``) are checked too.
* No file cites the external specification's upper-case file names, unpublished project
  notes, or a path into the shared folder outside the repository.
* Every relative Markdown link in ``README.md``, ``docs/**/*.md`` and ``examples/**/*.md``
  points to an existing file.

Scanned: the files under ``src/``, ``tests/``, ``bench/``, ``docs/``, ``scripts/``,
``examples/``, ``deploy/`` and ``README.md`` that git knows of (tracked, or new and not
ignored). The forbidden names are assembled from pieces so that this file does not cite them
itself.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
SCANNED = ("src", "tests", "bench", "docs", "scripts", "examples", "deploy", "README.md")
SKIPPED_DIRS = frozenset(
    {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
)

_NUMBER = r"\d+(?:\.\d+)*"
_SPAN = rf"§\s*{_NUMBER}(?:\s*[-–]\s*§?\s*{_NUMBER})?"  # §3, §3-6, §1.1-§1.2
_SECTIONS = rf"\s*{_SPAN}(?:\s*(?:,|and|or)\s*{_SPAN})*"
# ``docs/reference/<page>.md`` anywhere; ``reference/<page>.md`` only in files under docs/.
_FULL_CITATION = re.compile(
    rf"(?<![\w/.-])docs/reference/(?P<page>[\w-]+)\.md(?P<sections>{_SECTIONS})?"
)
_DOCS_CITATION = re.compile(
    rf"(?<![\w/.-])reference/(?P<page>[\w-]+)\.md(?P<sections>{_SECTIONS})?"
)
# Inside docs/reference/ the pages cite each other by bare name; only checked with a §.
_SIBLING_CITATION = re.compile(rf"(?<![\w/.-])(?P<page>[\w-]+)\.md(?P<sections>{_SECTIONS})")
_SECTION_NUMBER = re.compile(_NUMBER)  # every number of "§3-6, §8": 3, 6 and 8
_HEADING = re.compile(rf"^#{{1,6}}\s+({_NUMBER})\.?\s")

# Upper-case stems of the specification's files, then of unpublished project notes; the
# ".md" is added below so that this file never spells a forbidden name out.
_FORBIDDEN_STEMS = (
    *("PROTOCOL", "HTTP_API", "WEBHOOKS", "AUTH", "CHANNELS", "USERS", "LIMITS"),
    *("ENCRYPTION", "CLIENT_CONFIG"),
    *("DEVELOPERS", "STYLE"),
)
_FORBIDDEN_NAME = re.compile(
    r"(?<![\w-])(?:" + "|".join(_FORBIDDEN_STEMS) + r")" + re.escape(".md") + r"(?!\w)"
)
_FORBIDDEN_PATH = re.compile(
    "|".join(re.escape(piece) for piece in (".." + "/shared", "shared" + "/spec", ".." + "/spec/"))
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _git_files() -> list[Path] | None:
    """Tracked and new (not ignored) files under the scanned paths, or None without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    names = sorted({name for name in listed.stdout.decode().split("\0") if name})
    return [ROOT / name for name in names]


def _walked_files() -> list[Path]:
    found: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(
                p
                for p in path.rglob("*")
                if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)
            )
    return sorted(found)


@cache
def _text_files() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(path relative to the root, lines) of every scanned text file."""
    files = _git_files()
    if files is None:
        files = _walked_files()
    out: list[tuple[str, tuple[str, ...]]] = []
    for path in files:
        if not path.is_file() or SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
            continue  # deleted but still tracked, or a vendored tree
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append((path.relative_to(ROOT).as_posix(), tuple(text.splitlines())))
    return tuple(out)


def _outside_fences(lines: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """(line number, line) of a Markdown file, skipping fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(lines, 1):
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


@cache
def _headings(page: str) -> frozenset[str] | None:
    """The section numbers of ``docs/reference/<page>.md``, or None if there is no such page."""
    path = REFERENCE / f"{page}.md"
    if not path.is_file():
        return None
    lines = tuple(path.read_text(encoding="utf-8").splitlines())
    numbers: set[str] = set()
    for _, line in _outside_fences(lines):
        match = _HEADING.match(line)
        if match:
            numbers.add(match.group(1))
    return frozenset(numbers)


def _citation_patterns(rel: str) -> list[re.Pattern[str]]:
    patterns = [_FULL_CITATION]
    if rel.startswith("docs/"):
        patterns.append(_DOCS_CITATION)
    if not rel.endswith(".md") or rel.startswith("docs/reference/"):
        # Code and the reference pages cite a page by its bare name (``protocol.md §4.3``),
        # which keeps comment lines short; any ``<name>.md §N`` there must resolve.
        patterns.append(_SIBLING_CITATION)
    return patterns


def _check_citation(match: re.Match[str]) -> str | None:
    """Why this citation is broken, or None."""
    page = match.group("page")
    numbers = _headings(page)
    if numbers is None:
        return f"no page docs/reference/{page}.md"
    missing = [
        number
        for number in _SECTION_NUMBER.findall(match.group("sections") or "")
        if number not in numbers
    ]
    if missing:
        shown = ", ".join(f"§{number}" for number in missing)
        return f"docs/reference/{page}.md has no section {shown}"
    return None


def test_reference_citations_name_existing_sections() -> None:
    broken: list[str] = []
    checked = 0
    for rel, lines in _text_files():
        patterns = _citation_patterns(rel)
        for number, line in enumerate(lines, 1):
            for pattern in patterns:
                for match in pattern.finditer(line):
                    checked += 1
                    problem = _check_citation(match)
                    if problem is not None:
                        broken.append(f"{rel}:{number}: {match.group(0).strip()!r}: {problem}")
    assert checked, "no docs/reference citation found at all: is the scan broken?"
    assert not broken, "broken docs/reference citations:\n" + "\n".join(sorted(set(broken)))


def test_no_citations_of_files_outside_the_repository() -> None:
    offending: list[str] = []
    for rel, lines in _text_files():
        for number, line in enumerate(lines, 1):
            for pattern in (_FORBIDDEN_NAME, _FORBIDDEN_PATH):
                for match in pattern.finditer(line):
                    offending.append(f"{rel}:{number}: {match.group(0)}")
    assert not offending, (
        "cite docs/reference/<page>.md §N (or another file in the repository) instead of:\n"
        + "\n".join(offending)
    )


_REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:docs|src|tests|bench|scripts|examples|deploy)/[\w./-]*\w)"
)


def test_repository_paths_named_in_text_exist() -> None:
    """A path such as ``docs/scaling.md`` or ``src/kanal/hub/hub.py`` named anywhere exists
    (a glob or placeholder, with ``*`` or ``<``, is not a path)."""
    missing: list[str] = []
    checked = 0
    for rel, lines in _text_files():
        for number, line in enumerate(lines, 1):
            for match in _REPO_PATH.finditer(line):
                path = match.group(1)
                if "." not in Path(path).name and not (ROOT / path).exists():
                    continue  # a module-like word, not a file name (e.g. "tests/e2e")
                checked += 1
                if not (ROOT / path).exists():
                    missing.append(f"{rel}:{number}: {path}")
    assert checked, "no repository path found at all: is the scan broken?"
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def _link_targets(line: str) -> Iterator[str]:
    code_free = _INLINE_CODE.sub("", line)
    for match in _INLINE_LINK.finditer(code_free):
        yield match.group(1)
    definition = _LINK_DEFINITION.match(code_free)
    if definition:
        yield definition.group(1)


def _resolve(rel: str, target: str) -> Path | None:
    """The file a relative link points to, or None for external links and anchors."""
    if target.startswith("#") or _SCHEME.match(target):
        return None
    path = unquote(target.split("#", 1)[0].split("?", 1)[0])
    if not path:
        return None
    if path.startswith("/"):
        return ROOT / path.lstrip("/")
    return (ROOT / rel).parent / path


def test_relative_markdown_links_exist() -> None:
    broken: list[str] = []
    checked = 0
    for rel, lines in _text_files():
        in_tree = rel.startswith(("docs/", "examples/")) and rel.endswith(".md")
        if not (rel == "README.md" or in_tree):
            continue
        for number, line in _outside_fences(lines):
            for target in _link_targets(line):
                resolved = _resolve(rel, target)
                if resolved is None:
                    continue
                checked += 1
                if not resolved.exists():
                    broken.append(f"{rel}:{number}: ({target}) does not exist")
    assert checked, "no relative link found at all: is the scan broken?"
    assert not broken, "broken relative links:\n" + "\n".join(broken)
