"""The README and the pages under docs/: every relative link resolves, and the README stays short.

A link is `[text](path)`, `[text](path#anchor)`, `![alt](path)`, `[text](#anchor)` or a
reference definition `[name]: path`. Links inside fenced code blocks and inline code are not
links; http(s), mailto and other URLs with a scheme are not checked. The file must exist
relative to the page; an anchor must be the GitHub slug of a heading of the target page.
"""

from __future__ import annotations

import glob
import os
import re
from urllib.parse import unquote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
README_MAX_LINES = 260

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of nested brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?"
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages() -> list[str]:
    return [README, *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
            continue
        yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation other than hyphens and
    underscores removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    # Inline code counts by its literal text; outside it, <...> is an HTML tag and drops out.
    parts = re.split(r"(`+[^`]*`+)", text)
    text = "".join(part.strip("`") if part.startswith("`") else re.sub(r"<[^>]+>", "", part) for part in parts)
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered -1, -2, ... as GitHub
    does) and explicit HTML anchors."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: str):
    """(line number, target) of every relative link of a page."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for number, line in prose_lines(text):
        line = INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        definition = REFERENCE_DEF.match(line)
        if definition:
            targets.append(definition.group(1))
        for target in targets:
            if target and not SCHEME.match(target) and not target.startswith("//"):
                yield number, target


def broken_links(path: str) -> list[str]:
    problems = []
    page = os.path.relpath(path, REPO)
    for number, target in links(path):
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) if file_part else path
        where = f"{page}:{number}: ({target})"
        if not os.path.exists(resolved):
            problems.append(f"{where} {os.path.relpath(resolved, REPO)} does not exist")
            continue
        if not anchor:
            continue
        if os.path.isdir(resolved) or not resolved.endswith(".md"):
            problems.append(f"{where} an anchor on {os.path.relpath(resolved, REPO)}, which is not a Markdown page")
        elif unquote(anchor).lower() not in anchors(resolved):
            problems.append(f"{where} no heading of {os.path.relpath(resolved, REPO)} has the anchor #{anchor}")
    return problems


def test_every_relative_link_resolves():
    problems = [problem for path in pages() for problem in broken_links(path)]
    assert not problems, f"{len(problems)} broken link(s):\n" + "\n".join(problems)


def test_the_readme_is_a_short_front_page():
    with open(README, encoding="utf-8") as f:
        lines = len(f.read().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines, at most {README_MAX_LINES}: "
                                       "move guides and reference material into docs/")


def test_the_checker_follows_githubs_rules(tmp_path):
    """The checker itself: slugs, code blocks, external links, anchors on other pages."""
    assert slug("What a run writes") == "what-a-run-writes"
    assert slug("Colour, space and scale") == "colour-space-and-scale"
    assert slug("Recipes (`experiment=<name>`)") == "recipes-experimentname"
    assert slug("Not quite the paper's network") == "not-quite-the-papers-network"
    assert slug("Weights & Biases") == "weights--biases"
    assert slug("snake_case and hyphen-ated") == "snake_case-and-hyphen-ated"
    assert slug("[Linked](x.md) heading") == "linked-heading"

    (tmp_path / "other.md").write_text("# Other\n\n## A part\n\n## A part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Here\n\n"
        "[ok](other.md) [ok](other.md#a-part) [ok](other.md#a-part-1) [ok](#here) ![ok](other.md)\n"
        "[skip](https://example.com/x.md) [skip](mailto:a@b.c) `[skip](inline.md)`\n"
        "```\n[skip](fenced.md)\n```\n"
        "[bad](missing.md) [bad](other.md#nowhere) [bad](#nowhere) ![bad](missing.png)\n"
        "[ref]: missing-ref.md\n"
    )
    problems = broken_links(str(page))
    assert len(problems) == 5, problems
    for target in ("missing.md", "other.md#nowhere", "(#nowhere)", "missing.png", "missing-ref.md"):
        assert any(target in problem for problem in problems), (target, problems)
    assert all("page.md:10:" in problem for problem in problems[:4]) and "page.md:11:" in problems[4]
