"""docs/ is the code's reference: the code cites its sections, and every cited section exists.

The code used to cite a method spec and design notes kept outside the repository;
``tools/rewrite_doc_refs.py`` rewrites those citations into ``docs/<page>.md#<section>`` using
``docs/refmap.tsv``. The test strings below spell the section sign as an escape so that this
file cites nothing itself.
"""

import glob
import importlib.util
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = "\u00a7"


def _load_tool():
    path = os.path.join(ROOT, "tools", "rewrite_doc_refs.py")
    spec = importlib.util.spec_from_file_location("rewrite_doc_refs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def _docs_pages():
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _anchors():
    return {os.path.basename(p): tool.heading_anchors(_read(p)) for p in _docs_pages()}


def test_code_cites_docs_not_the_external_notes():
    left = tool.find_citations(ROOT)
    assert not left, (
        f"{len(left)} citation(s) of the external spec/DESIGN notes; run "
        "python tools/rewrite_doc_refs.py (add rows to docs/refmap.tsv if it asks):\n"
        + "\n".join(f"  {c.path}:{c.line}: {c.text}" for c in left[:50])
    )


def test_docs_links_in_code_resolve():
    anchors = _anchors()
    bad = []
    for rel in tool.scanned_files(ROOT):
        for page, anchor in tool.docs_links(_read(rel)):
            if anchor not in anchors.get(page, ()):
                bad.append(f"{rel}: docs/{page}#{anchor}")
    assert not bad, "links to a missing docs page or section:\n  " + "\n  ".join(sorted(set(bad)))


def test_links_inside_docs_resolve():
    anchors = _anchors()
    bad = []
    for rel in _docs_pages():
        page = os.path.basename(rel)
        for target, anchor in re.findall(r"\]\(([\w-]+\.md)?#([\w-]+)\)", _read(rel)):
            if anchor not in anchors.get(target or page, ()):
                bad.append(f"{rel}: {target or page}#{anchor}")
    assert not bad, "dead links inside docs/:\n  " + "\n  ".join(bad)


def test_refmap_targets_exist_and_cover_every_citation():
    anchors = _anchors()
    refmap = tool.load_refmap(ROOT)
    for (key, path), target in refmap.items():
        page, anchor = tool.DOCS_LINK.fullmatch(target).groups()
        assert anchor in anchors.get(page, ()), f"refmap row {key!r}: no section {target}"
        assert path is None or os.path.isfile(os.path.join(ROOT, path)), f"refmap: no {path}"
    missing = sorted(
        {
            f"{c.path}: {k}"
            for c in tool.find_citations(ROOT)
            for k in c.keys
            if tool.target_for(k, c.path, refmap) is None
        }
    )
    assert not missing, "citations without a docs/refmap.tsv row:\n  " + "\n  ".join(missing)


def test_rewrite_handles_every_citation_form_and_is_idempotent():
    refmap = {
        (f"spec {S}6.4", None): "docs/method.md#training-recipe",
        (f"spec {S}2.3", None): "docs/method.md#transformer-layer",
        (f"spec {S}10.1", None): "docs/method.md#layernorm-over-tokens-and-channels",
        (f"spec {S}10.16", None): "docs/method.md#bugs-fixed",
        (f"spec {S}10.17", None): "docs/method.md#bugs-fixed",
        (f"spec {S}4-5", None): "docs/method.md#samplers",
        (f"DESIGN {S}5", None): "docs/design.md#contracts",
        (f"DESIGN {S}5", "a/model_dir.py"): "docs/formats.md#model_dir",
    }
    text = (
        f"# AdamW (spec {S}6.4).\n# Spec {S}2.3, {S}10.1\n# {S}10.16 and {S}10.17 /\n"
        f"# bare {S}4-5; DESIGN {S}5; STYLE {S}4.4 stays\n"
    )
    new, unknown = tool.rewrite_text(text, "a/x.py", refmap)
    assert unknown == []
    assert new == (
        "# AdamW (docs/method.md#training-recipe).\n# docs/method.md#transformer-layer, "
        "docs/method.md#layernorm-over-tokens-and-channels\n# docs/method.md#bugs-fixed /\n"
        f"# bare docs/method.md#samplers; docs/design.md#contracts; STYLE {S}4.4 stays\n"
    )
    assert tool.rewrite_text(new, "a/x.py", refmap) == (new, [])
    # a file-specific row wins; Markdown gets relative links
    assert tool.rewrite_text(f"DESIGN {S}5", "a/model_dir.py", refmap)[0] == (
        "docs/formats.md#model_dir"
    )
    assert tool.rewrite_text(f"(spec {S}6.4)", "benchmarks/README.md", refmap)[0] == (
        "([docs/method.md#training-recipe](../docs/method.md#training-recipe))"
    )
    # overlong rewritten comment and docstring lines re-wrap within 100 columns, same words
    long_doc = (
        'def f():\n    """Bank update with score = -CE of the subnet on the batch, a fairly long '
        f'line (spec {S}2.3).\n    Second line of the same paragraph.\n    """\n'
        f"    x = 1  # a trailing comment that grows past the line length limit (spec {S}10.1)\n"
    )
    wrapped, _ = tool.rewrite_text(long_doc, "a/x.py", refmap)
    assert max(len(line) for line in wrapped.split("\n")) <= 100
    flat, _ = tool.rewrite_text(long_doc, "a/x.txt", refmap)  # not .py: no wrapping
    assert max(len(line) for line in flat.split("\n")) > 100
    words = [sorted(w for w in t.split() if w != "#") for t in (wrapped, flat)]
    assert words[0] == words[1]
    compile(wrapped, "a/x.py", "exec")
    assert tool.rewrite_text(wrapped, "a/x.py", refmap) == (wrapped, [])
    # an unmapped citation is reported and left as it is
    assert tool.rewrite_text(f"spec {S}99", "a/x.py", refmap) == (f"spec {S}99", [f"spec {S}99"])


def test_heading_anchors_follow_github():
    md = "# A Title\n## model_dir\n### `config.json`\n```\n# not a heading\n```\n## A Title\n"
    assert tool.heading_anchors(md) == {"a-title", "model_dir", "configjson", "a-title-1"}
