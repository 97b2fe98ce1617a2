"""Rewrites the code's section citations of the method spec and the design notes into docs/ links.

Comments and docstrings used to cite two documents a clone of this repository does not contain,
as "spec" or "DESIGN" followed by the section sign and a number. The repository's own ``docs/``
replace them; ``docs/refmap.tsv`` says which docs anchor replaces which citation:

    <citation>\t<docs target>[\t<file>]

one row per distinct citation, e.g. ``spec`` + section ``6.4`` ->
``docs/method.md#training-recipe``; a row with a third column applies to that file only and
wins over the general row.

Usage (from the repository root):

    python tools/rewrite_doc_refs.py           # rewrite in place (idempotent), black the .py
    python tools/rewrite_doc_refs.py --check   # exit 1 listing every remaining citation
    python tools/rewrite_doc_refs.py --list    # the distinct citations found, one per line

Scanned: ``.py`` and ``.md`` files under ``SCAN_DIRS`` and the top-level ``README.md``. A
citation may list several sections ("spec" 2.3, 10.1 or 6.3/7); a bare section sign in these
files cites the spec (the only numbered document they cite without a name), except after
"STYLE". A citation without a refmap row stops the rewrite before anything is written (exit 2).
In ``.py`` files the citation becomes the plain target (``docs/method.md#losses``); in Markdown
it becomes a relative link.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys
import tokenize
from typing import Iterable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCAN_DIRS = ("elasticvit_tf", "search", "export", "tests", "benchmarks", "tools")
SCAN_FILES = ("README.md",)
SKIP_DIRS = {"__pycache__", "results", "data"}
REFMAP = os.path.join("docs", "refmap.tsv")
WIDTH = 100  # black's line length (pyproject.toml): rewritten comments and docstrings re-wrap

SECTION = "\u00a7"  # the section sign, spelled as an escape so this file never cites anything
_REF = r"\d+(?:\.\d+)*(?:-\d+(?:\.\d+)*)?"
_REFS = rf"{SECTION}\s?{_REF}(?:\s*(?:,|/|and)\s*{SECTION}\s?{_REF})*"
_DOC = r"(?:``)?(?:shared/reference/)?elasticvit_spec\.md(?:``)?|spec|design"
# A named citation ("spec" / "DESIGN" / the spec's file name, then the sections), or a bare one.
CITATION = re.compile(
    rf"(?:(?<![\w/])(?P<doc>{_DOC})\s+|(?<!STYLE )(?<![\w{SECTION}]))(?P<refs>{_REFS})",
    re.IGNORECASE,
)
_ONE_REF = re.compile(rf"{SECTION}\s?({_REF})")
DOCS_LINK = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")


@dataclasses.dataclass(frozen=True)
class Citation:
    path: str  # relative to the repository root, "/"-separated
    line: int
    text: str  # the matched text
    keys: tuple[str, ...]  # normalised citations, e.g. ("spec \u00a76.4",)


def citation_keys(match: re.Match) -> tuple[str, ...]:
    doc = (match.group("doc") or "spec").strip("`").lower()
    name = "DESIGN" if doc == "design" else "spec"
    return tuple(f"{name} {SECTION}{r}" for r in _ONE_REF.findall(match.group("refs")))


def scanned_files(root: str = ROOT, suffixes: Iterable[str] = (".py", ".md")) -> list[str]:
    """Relative paths of the files the tool reads, sorted."""
    suffixes = tuple(suffixes)
    out = [f for f in SCAN_FILES if f.endswith(suffixes) and os.path.isfile(os.path.join(root, f))]
    for d in SCAN_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
            dirnames[:] = sorted(n for n in dirnames if n not in SKIP_DIRS and not n[0] == ".")
            for name in filenames:
                if name.endswith(suffixes):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def find_citations(root: str = ROOT, suffixes: Iterable[str] = (".py", ".md")) -> list[Citation]:
    """Every citation in the scanned files."""
    found = []
    for rel in scanned_files(root, suffixes):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        for m in CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(Citation(rel, line, m.group(0), citation_keys(m)))
    return found


def load_refmap(root: str = ROOT) -> dict[tuple[str, Optional[str]], str]:
    """``{(citation, file or None): target}`` from docs/refmap.tsv (``#`` starts a comment)."""
    path = os.path.join(root, REFMAP)
    out: dict[tuple[str, Optional[str]], str] = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) not in (2, 3) or not DOCS_LINK.fullmatch(cols[1]):
                raise ValueError(
                    f"{REFMAP}:{n}: {line!r}; expected 'citation<TAB>docs/<page>.md#<section>"
                    "[<TAB>path]'"
                )
            key = (cols[0], cols[2] if len(cols) == 3 else None)
            if key in out:
                raise ValueError(f"{REFMAP}:{n}: {cols[0]!r} is mapped twice")
            out[key] = cols[1]
    return out


def target_for(key: str, rel: str, refmap: dict) -> Optional[str]:
    return refmap.get((key, rel)) or refmap.get((key, None))


def _render(targets: list[str], rel: str) -> str:
    if rel.endswith(".md"):
        up = os.path.relpath(ROOT, os.path.join(ROOT, os.path.dirname(rel))).replace(os.sep, "/")
        prefix = "" if up == "." else up + "/"
        return ", ".join(f"[{t}]({prefix}{t})" for t in targets)
    return ", ".join(targets)


def rewrite_text(text: str, rel: str, refmap: dict) -> tuple[str, list[str]]:
    """``(new text, citations without a refmap row)`` for the file at ``rel``."""
    unknown: list[str] = []

    def sub(m: re.Match) -> str:
        targets: list[str] = []
        for key in citation_keys(m):
            t = target_for(key, rel, refmap)
            if t is None:
                unknown.append(key)
            elif t not in targets:
                targets.append(t)
        return _render(targets, rel) if targets else m.group(0)

    new = CITATION.sub(sub, text)
    if rel.endswith(".py") and new != text:
        old_lines, new_lines = text.split("\n"), new.split("\n")
        changed = {i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b}
        new = wrap_long_lines(new, changed)
    return new, unknown


def _line_kinds(text: str) -> dict[int, tuple[str, object]]:
    """Per 1-based line: ("comment", group), ("inline", column) or ("string", token index)."""
    kinds: dict[int, tuple[str, object]] = {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return kinds
    for i, tok in enumerate(tokens):
        row, col = tok.start
        if tok.type == tokenize.COMMENT:
            if tok.line[:col].strip():
                kinds[row] = ("inline", col)
            else:
                kinds[row] = ("comment", tok.line[:col])
        elif tok.type == tokenize.STRING and re.match(r"[rRbBuU]?(\"\"\"|\'\'\')", tok.string):
            for r in range(row, tok.end[0] + 1):
                kinds.setdefault(r, ("string", i))
    return kinds


_BULLET = re.compile(r"(\s*)((?:[*-]|\d+\.)\s+)?")


def _continuation_prefix(line: str, kind: str) -> str:
    if kind == "comment":
        indent, rest = line[: line.index("#")], line[line.index("#") + 1 :].lstrip()
        bullet = _BULLET.match(rest).group(2) or ""
        return indent + "# " + " " * len(bullet)
    indent = line[: len(line) - len(line.lstrip())]
    body = line.lstrip().lstrip("rRbBuU").lstrip("\"'")
    if indent and re.match(r"[\w*]+(?: \([^)]*\))?: \S", body):  # an Args-style "name: text"
        return indent + "    "
    return indent + " " * len(_BULLET.match(body).group(2) or "")


def _break_at(line: str, start: int, width: int) -> int:
    """Index of the last space in ``line[start : width + 1]`` outside inline code, or -1."""
    for cut in range(min(width, len(line) - 1), start, -1):
        if line[cut] == " " and line.count("``", 0, cut) % 2 == 0:
            ops = "+-*=<>"
            if line[:cut].replace("``", "").count("`") % 2 == 0 and line[cut + 1] not in ops:
                if line[cut - 1] in ops:
                    continue
                return cut
    return -1


def _can_take(prev: str, nxt: str, prefix: str, kind: str) -> bool:
    """Whether the overflow of ``prev`` may be prepended to ``nxt`` (same paragraph)."""
    body = nxt[len(prefix) :] if nxt.startswith(prefix) else None
    if not body or body[0].isspace() or prev.rstrip().endswith(('"""', "'''", "::", ":")):
        return False
    if kind == "comment" and not prefix.rstrip().endswith("#"):
        return False
    return not re.match(r"(\"\"\"|\'\'\'|[*-]\s|\d+\.\s|>>>|#)", body)


def wrap_long_lines(text: str, changed: set[int], width: int = WIDTH) -> str:
    """Re-wraps the comment and docstring lines in ``changed`` (0-based) that exceed ``width``;
    an overlong inline comment moves above its code line. Other lines are left as they are."""
    kinds = _line_kinds(text)
    lines = text.split("\n")
    recs = [[ln, kinds.get(i + 1), i in changed] for i, ln in enumerate(lines)]
    out: list[list] = []
    i = 0
    while i < len(recs):
        line, kind, dirty = recs[i]
        if not dirty or len(line) <= width or kind is None:
            out.append(recs[i])
            i += 1
            continue
        if kind[0] == "inline":
            col = int(kind[1])
            indent = line[: len(line) - len(line.lstrip())]
            recs[i : i + 1] = [
                [indent + line[col:], ("comment", indent), True],
                [line[:col].rstrip(), None, False],
            ]
            continue
        prefix = _continuation_prefix(line, kind[0])
        cut = _break_at(line, len(prefix) + 1, width)
        if cut <= len(prefix) or not line[:cut].strip("#\"' "):
            out.append(recs[i])
            i += 1
            continue
        head, overflow = line[:cut].rstrip(), line[cut + 1 :]
        out.append([head, kind, False])
        nxt = recs[i + 1] if i + 1 < len(recs) else None
        if nxt is not None and nxt[1] == kind and _can_take(line, nxt[0], prefix, kind[0]):
            recs[i + 1] = [prefix + overflow + " " + nxt[0][len(prefix) :], kind, True]
        else:
            recs.insert(i + 1, [prefix + overflow, kind, True])
        i += 1
    return "\n".join(r[0] for r in out)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def docs_links(text: str) -> list[tuple[str, str]]:
    """``(file, anchor)`` of every ``docs/<page>.md#<section>`` in ``text``."""
    return DOCS_LINK.findall(text)


def _black(paths: list[str]) -> None:
    if not paths:
        return
    try:
        subprocess.run([sys.executable, "-m", "black", "-q", *paths], cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"note: black did not run ({e}); run it on the rewritten files", file=sys.stderr)


def main(argv: list[str]) -> int:
    args = set(argv)
    if not args <= {"--check", "--list"}:
        bad = sorted(args - {"--check", "--list"})
        print(f"unknown argument(s) {bad}; expected --check or --list", file=sys.stderr)
        return 2
    if "--list" in args:
        for key in sorted({k for c in find_citations() for k in c.keys}):
            print(key)
        return 0
    if "--check" in args:
        left = find_citations()
        for c in left:
            print(f"{c.path}:{c.line}: {c.text}")
        if left:
            n = len(left)
            print(f"{n} citation(s) left: run python tools/rewrite_doc_refs.py", file=sys.stderr)
            return 1
        return 0
    refmap = load_refmap()
    new_texts, unknown = {}, []
    for rel in scanned_files():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            text = f.read()
        new, missing = rewrite_text(text, rel, refmap)
        unknown += [f"{rel}: {k}" for k in missing]
        if new != text:
            new_texts[rel] = new
    if unknown:
        print(f"citations without a row in {REFMAP} (nothing was rewritten):", file=sys.stderr)
        for u in sorted(set(unknown)):
            print(f"  {u}", file=sys.stderr)
        return 2
    for rel, new in new_texts.items():
        with open(os.path.join(ROOT, rel), "w", encoding="utf-8") as f:
            f.write(new)
    _black([rel for rel in new_texts if rel.endswith(".py")])
    print(f"rewrote citations in {len(new_texts)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
