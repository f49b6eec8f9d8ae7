"""The README and docs/ as a new user meets them: short, followable, no dead links.

These read only files (no server, no network): a link that points nowhere, a
quickstart out of order or a hub id that pdcore would refuse is a broken promise
to the first person who copies it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 350
QUICKSTART = ("make demo", "source .venv/bin/activate", "pdcore up", "curl")

# [text](target) outside code; the target up to a space or ')'
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
MODEL_PATH = re.compile(r"--model(?:-path)?[ =](\S+)")


def _prose(text: str) -> str:
    """The text without fenced code blocks or inline code (links there are not links)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _code_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(page):
    dead = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto, or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            dead.append(target)
    assert not dead, f"{page.name} links to files that do not exist: {dead}"


def test_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): a new user should "
        f"find the quickstart and the map; move depth into docs/"
    )


def test_quickstart_commands_come_in_the_order_a_new_user_runs_them():
    blocks = _code_blocks(_section(README.read_text(), "Quickstart"))
    assert blocks, "the Quickstart section has no code block"
    lines = [line.strip() for line in blocks[0].splitlines()]
    found = []
    for command in QUICKSTART:
        at = [i for i, line in enumerate(lines) if line.startswith(command)]
        assert at, f"the quickstart block lacks `{command}`: {lines}"
        found.append(at[0])
    assert found == sorted(found), (
        f"quickstart commands out of order {dict(zip(QUICKSTART, found, strict=True))}: without "
        f"`source .venv/bin/activate` before `pdcore up` the command is not on PATH"
    )


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_commands_name_local_model_paths_not_hub_ids(page):
    """pdcore loads local files only, so a copied hub id fails at startup."""
    code = "\n".join(_code_blocks(page.read_text()))
    assert "meta-llama/" not in code, f"{page.name} has a meta-llama/ hub id in a command"
    hub_ids = [
        value
        for value in MODEL_PATH.findall(code)
        if not value.startswith(("/", ".", "~", "$")) and not value.endswith(".gguf")
    ]
    assert not hub_ids, (
        f"{page.name} passes {hub_ids} as --model-path: pdcore refuses hub ids, "
        f"write a local folder or .gguf file"
    )
