"""The documentation holds together: every relative link and #anchor in README.md and docs/*.md resolves, and
docs/configuration.md names every configuration key (and no key that does not exist)."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from gateway.config import Config

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
CONFIGURATION = REPO / "docs" / "configuration.md"

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:


def _prose(text: str) -> str:
    """The text without fenced code blocks (a link or heading in one is not one)."""
    return _FENCE.sub("", text)


def _heading_text(raw: str) -> str:
    """What GitHub renders of a heading: code spans' contents, link texts, no emphasis markers."""
    text = _CODE_SPAN.sub(lambda m: m.group(0)[len(m.group(1)) : -len(m.group(1))].strip(), raw)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"(\*\*|__|\*|_(?=\W|$)|(?<=\W)_)", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case; letters, digits, '-', '_' and spaces kept; spaces become '-'."""
    text = _heading_text(heading).strip().lower()
    kept = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(_prose(path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of the Markdown links and images in a file's prose (not in code)."""
    text = _CODE_SPAN.sub("", _prose(path.read_text()))
    return [m.group(1) for m in _LINK.finditer(text)]


def test_slugs_follow_github() -> None:
    assert slug("The wire contract in brief") == "the-wire-contract-in-brief"
    assert slug("Any bot: sessions in bodies and paths") == "any-bot-sessions-in-bodies-and-paths"
    assert slug("The gateway's own answers") == "the-gateways-own-answers"
    assert slug("`[listen]`") == "listen"
    assert slug("Dashboard, alerts and recording rules") == "dashboard-alerts-and-recording-rules"
    assert slug("deferral / pick-up") == "deferral--pick-up"
    assert slug("session_gateway_build_info") == "session_gateway_build_info"


def test_the_docs_exist() -> None:
    names = {p.name for p in DOCS}
    for name in (
        "README.md",
        "configuration.md",
        "wire-contract.md",
        "operating.md",
        "scaling.md",
        "embedding.md",
        "performance.md",
        "architecture.md",
    ):
        assert name in names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    found = links(doc)
    assert found, f"{doc}: no links found (the link pattern no longer matches)"
    for target in found:
        if not target or _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
            continue
        if REPO not in dest.parents and dest != REPO:
            broken.append(f"{target}: outside the repository")
            continue
        if anchor:
            if dest.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif unquote(anchor) not in anchors(dest):
                broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}:\n" + "\n".join(broken)


def _config_keys() -> set[str]:
    """`section.key` for every field of every section dataclass of Config."""
    config = Config()
    return {
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(config)
        for key in dataclasses.fields(getattr(config, section.name))
    }


def test_configuration_doc_names_every_key() -> None:
    text = CONFIGURATION.read_text()
    keys = _config_keys()
    assert len(keys) > 50, keys  # the dataclasses were read
    missing = sorted(key for key in keys if f"`{key}`" not in text)
    assert not missing, f"docs/configuration.md does not mention: {missing}"


def test_configuration_doc_lists_no_key_that_does_not_exist() -> None:
    every_key = _prose(CONFIGURATION.read_text()).partition("\n## Every key\n")[2]
    listed = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", every_key, flags=re.MULTILINE)
    assert listed, "no key rows found under '## Every key'"
    assert sorted(set(listed) - _config_keys()) == []
    assert len(listed) == len(set(listed)), "a key is listed twice"
    assert set(listed) == _config_keys()


def test_readme_keeps_the_commands_ci_and_the_quick_start_rely_on() -> None:
    # .ci/run runs ./scripts/test, "the README's test command"; the quick start runs the demo.
    readme = (REPO / "README.md").read_text()
    assert "./scripts/test" in (REPO / ".ci" / "run").read_text()
    for command in ("./scripts/test", "./scripts/demo"):
        assert re.search(rf"^{re.escape(command)}\b", readme, flags=re.MULTILINE), command
