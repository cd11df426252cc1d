"""KFP cron: six fields with seconds first; five fields rejected with the equivalent, or converted on request."""

from __future__ import annotations

import pytest

from pipelines.cron import CronError, normalize_cron


@pytest.mark.parametrize(
    "expr",
    ["0 0 2 * * *", "0 */15 * * * *", "0 0 9 ? * MON-FRI", "30 0 2 1,15 JAN-jun 0", "0 0 0 * * 6"],
)
def test_six_field_expressions_are_accepted(expr: str) -> None:
    assert normalize_cron(expr) == expr


def test_whitespace_is_normalized() -> None:
    assert normalize_cron("  0  0 2 *\t* * ") == "0 0 2 * * *"


def test_five_fields_are_rejected_with_the_six_field_equivalent() -> None:
    with pytest.raises(CronError) as error:
        normalize_cron("0 2 * * *")
    message = str(error.value)
    assert "'0 0 2 * * *'" in message and "--convert-cron" in message and "five fields" in message


def test_five_fields_are_converted_only_when_asked() -> None:
    assert normalize_cron("0 2 * * *", convert_five_fields=True) == "0 0 2 * * *"


@pytest.mark.parametrize("expr", ["", "* * * *", "0 0 0 2 * * 2027", "0 0 2 * * * *"])
def test_other_field_counts_are_rejected_even_when_converting(expr: str) -> None:
    with pytest.raises(CronError, match="expected six cron fields"):
        normalize_cron(expr, convert_five_fields=True)


def test_a_descriptor_is_rejected_with_its_six_field_form() -> None:
    with pytest.raises(CronError, match="descriptor '@daily', which is '0 0 0 \\* \\* \\*'"):
        normalize_cron("@daily")


@pytest.mark.parametrize(
    "expr, problem",
    [
        ("0 0 25 * * *", "hours value '25' is outside 0-23"),
        ("60 0 2 * * *", "seconds value '60' is outside 0-59"),
        ("0 0 2 0 * *", "day-of-month value '0' is outside 1-31"),
        ("0 0 2 * 13 *", "month value '13' is outside 1-12 or JAN-DEC"),
        ("0 0 2 * * 7", "day-of-week value '7' is outside 0-6 or SUN-SAT"),
        ("0 0 2 * * FUN", "day-of-week value 'FUN' is outside"),
        ("0 */0 * * * *", "minutes item '\\*/0' is not a value"),
        ("0 0 2 * * 1--2", "day-of-week item '1--2' is not a value"),
    ],
)
def test_out_of_range_or_malformed_fields_are_rejected(expr: str, problem: str) -> None:
    with pytest.raises(CronError, match=problem):
        normalize_cron(expr)


def test_a_converted_expression_is_still_validated() -> None:
    with pytest.raises(CronError, match="day-of-week value '7'"):
        normalize_cron("0 2 * * 7", convert_five_fields=True)
