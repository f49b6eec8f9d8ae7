"""`pdcore bench serving` says how request lengths were drawn (--random-range-ratio,
SGLang's rule and default) and which lengths came out, before the run and in the
summary table, so a 1..N-token run is not read as an N-token run."""

from __future__ import annotations

import json
import statistics

import pytest
from benchserve.stub_server import StubServer

from pdcore.benchserve import lengths
from pdcore.benchserve.cli import build_parser, run

INPUT_LEN, OUTPUT_LEN, NUM = 40, 8, 12


@pytest.fixture(scope="module")
def stub():
    server = StubServer()
    yield server
    server.stop()


def bench(stub, tmp_path, capsys, *extra: str) -> tuple[dict, str, str]:
    out = tmp_path / "report.json"
    argv = ["--base-url", stub.url, "--num-prompts", str(NUM), "--warmup-requests", "0"]
    argv += ["--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN)]
    argv += ["--disable-progress", "--output-file", str(out), *extra]
    assert run(argv) == 0
    captured = capsys.readouterr()
    return json.loads(out.read_text()), captured.out, captured.err


def spread(values) -> str:
    return f"{min(values)}/{statistics.median(values):g}/{max(values)}"


def test_range_ratio_defaults_to_sglangs_0():
    args = build_parser("pdcore bench serving").parse_args([])
    assert args.random_range_ratio == 0.0, "SGLang's bench_serving default is 0.0"


def test_header_states_the_rule_and_the_lengths_drawn(stub, tmp_path, capsys):
    report, _, err = bench(stub, tmp_path, capsys)
    rule = (
        f"--random-range-ratio 0: input tokens uniformly from [1, {INPUT_LEN}], "
        f"output tokens from [1, {OUTPUT_LEN}]"
    )
    assert rule in err, f"the header must say lengths go from 1 to len:\n{err}"
    inputs = [r["prompt_tokens"] for r in report["requests"]]
    outputs = [r["requested_output_tokens"] for r in report["requests"]]
    drawn = f"drawn input lengths min/median/max {spread(inputs)}, output {spread(outputs)}"
    assert drawn in err, f"the header must give the lengths actually drawn:\n{err}"
    assert min(inputs) < INPUT_LEN, "with ratio 0 the seed should draw prompts shorter than len"


def test_summary_table_repeats_ratio_and_drawn_lengths(stub, tmp_path, capsys):
    report, out, _ = bench(stub, tmp_path, capsys, "--random-range-ratio", "0.5")
    inputs = [r["prompt_tokens"] for r in report["requests"]]
    outputs = [r["requested_output_tokens"] for r in report["requests"]]
    assert all(INPUT_LEN // 2 <= n <= INPUT_LEN for n in inputs), inputs
    rows = out.splitlines()
    assert f"{'Random range ratio:':<34}{'0.5':>22}" in rows, out
    assert f"{'Input len min/median/max:':<34}{spread(inputs):>22}" in rows, out
    assert f"{'Output len min/median/max:':<34}{spread(outputs):>22}" in rows, out


def test_ratio_1_is_described_as_exact_lengths():
    text = lengths.rule("random", 1024, 128, 1.0)
    assert "input tokens exactly 1024, output tokens exactly 128" in text, text


def test_sharegpt_lengths_come_from_the_data_so_no_ratio_is_claimed():
    line = lengths.header("sharegpt", 1024, 1024, 0.0, [5, 9, 30], [2, 4])
    assert "--random-range-ratio" not in line, line
    assert line == "drawn input lengths min/median/max 5/9/30, output 2/3/4", line
