"""The pytest plugin (mirasol.testing.pytest_plugin) as a user's CI sees it: the example of
examples/test_my_attention.py passes, the same kernel with an off-by-one chunk boundary
fails with the parity report, the profile and the header are there."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).parents[1] / "examples" / "test_my_attention.py"


def _run(pytester, source: str, *args):
    pytester.makepyfile(test_user=source)
    # The plugin is the installed entry point: nothing in the user's files loads it.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                         "--hypothesis-profile=mirasol-ci", *args)


def test_a_users_kernel_passes_and_the_header_says_what_ran(pytester):
    result = _run(pytester, EXAMPLE.read_text())
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["mirasol *: torch *, triton *, TRITON_INTERPRET *"])


def test_a_wrong_kernel_fails_with_the_parity_report(pytester):
    # Chunk boundaries one token early: wrong wherever a chunk holds more than one token.
    mine = "torch.arange(q.shape[2], device=q.device) // chunk_size"
    wrong = EXAMPLE.read_text().replace(mine, f"({mine.replace(' //', ' + 1) //')}")
    assert wrong != EXAMPLE.read_text()
    result = _run(pytester, wrong)
    result.assert_outcomes(failed=1)
    # (fnmatch reads [...] as a character class: ? stands for the brackets)
    result.stdout.fnmatch_lines([
        "*parity check failed:*",
        "*out ?float16? FAIL: max err * (got *, oracle *); allowed * = 2 x reference err *",
        "*dq ?float16? FAIL:*", "*Failing explicit example*"])


def test_the_module_fixture_and_junit_properties(pytester):
    result = _run(pytester, """
import torch
from mirasol import TokenLearner

def test_layer(parity_module):
    reports = parity_module(TokenLearner(16, num_tokens=2), (torch.randn(2, 9, 16),),
                            backend="torch", names=["x"])
    assert [r.name for r in reports][:2] == ["out", "dx"] and all(r.ok for r in reports)
""", "--junitxml=report.xml")
    result.assert_outcomes(passed=1)
    assert 'name="parity"' in (pytester.path / "report.xml").read_text()
