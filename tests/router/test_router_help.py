"""``pdcore router --help`` explains every option and shows its default."""

from __future__ import annotations

import argparse
import re

import pytest

from pdcore.launch_router import build_parser


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _blocks(help_text: str) -> dict[str, str]:
    """Each option's entry in the help, keyed by its first flag."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (--[a-z0-9-]+)", line)
        if m:
            current = m.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {flag: re.sub(r"\s+", " ", text) for flag, text in blocks.items()}


PARSER = build_parser("pdcore router")
BLOCKS = _blocks(PARSER.format_help())


@pytest.mark.parametrize("action", _options(PARSER), ids=lambda a: a.option_strings[0])
def test_every_option_has_help_and_shows_its_default(action):
    flag = action.option_strings[0]
    assert action.help and action.help.strip(), f"{flag} has no help text"
    block = BLOCKS.get(flag, "")
    assert "default" in block, f"{flag}'s help does not say its default: {block!r}"
    default = action.default
    if isinstance(default, (int, float, str)) and not isinstance(default, bool):
        shown = "64 MiB" if flag == "--max-payload-size" else str(default)
        assert shown in block, f"{flag}'s default {default!r} is not in its help: {block!r}"


def test_sgl_router_cache_aware_flags_exist_with_its_defaults():
    ns = PARSER.parse_args([])
    got = (ns.cache_threshold, ns.balance_abs_threshold, ns.balance_rel_threshold)
    assert got == (0.3, 64, 1.5), "sgl-router's names and defaults for cache_aware's knobs"


def test_cache_aware_flags_are_reported_in_server_info():
    import asyncio

    import httpx

    from pdcore.launch_router import parse_router_args
    from pdcore.router.app import build_app

    flags = ["--cache-threshold", "0.8", "--balance-abs-threshold", "5"]
    args, _ = parse_router_args(["--worker-urls", "http://127.0.0.1:9", *flags], "test")

    async def info():
        transport = httpx.ASGITransport(app=build_app(args))
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            return (await client.get("/get_server_info")).json()["router"]

    got = asyncio.run(info())
    assert (got["cache_threshold"], got["balance_abs_threshold"]) == (0.8, 5), got
    assert got["balance_rel_threshold"] == 1.5, got


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--cache-threshold", "1.5"), ("--balance-abs-threshold", "-1"),
     ("--balance-rel-threshold", "0.5")],
)  # fmt: skip
def test_bad_threshold_is_a_usage_error_naming_the_flag(flag, value, capsys):
    from pdcore.launch_router import parse_router_args

    with pytest.raises(SystemExit) as e:
        parse_router_args(["--worker-urls", "http://127.0.0.1:9", flag, value], "pdcore router")
    assert e.value.code == 2
    assert f"error: {flag}:" in capsys.readouterr().err
