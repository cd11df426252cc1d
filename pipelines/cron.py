"""Cron expressions for KFP recurring runs: six fields, seconds first, never silently misread.

KFP's scheduler parses cron with seconds as the first field and an optional day-of-week, so a classic
five-field expression is *accepted* by the server and means something else: ``0 2 * * *`` would run at minute 2
of every hour, not at 02:00. Here a five-field expression is rejected with its six-field equivalent in the
message, or converted only when the caller asks for it explicitly. Schedules run in the cluster's time zone
(UTC on AKS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.errors import ProjectError


class CronError(ProjectError):
    """A cron expression is not a valid six-field KFP cron expression."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # symbolic values, in order from ``low``


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_FIELDS = (
    _Field("seconds", 0, 59),
    _Field("minutes", 0, 59),
    _Field("hours", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _DAYS),
)
_LAYOUT = "seconds minutes hours day-of-month month day-of-week"
_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_ITEM = re.compile(r"^(?P<range>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")


def normalize_cron(expr: str, convert_five_fields: bool = False) -> str:
    """Return ``expr`` as a validated six-field KFP cron expression (fields joined by single spaces).

    Args:
        expr: The cron expression, six fields with seconds first (``0 0 2 * * *`` is 02:00 daily).
        convert_five_fields: Convert a five-field expression by prepending a ``0`` seconds field, instead of
            rejecting it. Only set this from an explicit user choice (``--convert-cron``).

    Raises:
        CronError: the expression has a field count other than six (five when not converting), or a field is
            outside its range. The message for five fields shows the six-field equivalent.
    """
    fields = expr.split()
    if len(fields) == 5:
        six = " ".join(["0", *fields])
        if not convert_five_fields:
            raise CronError(
                f"cron {expr!r} has five fields, but KFP reads six with seconds first ({_LAYOUT}) and would "
                f"misread it; write the six-field equivalent {six!r}, or pass --convert-cron to convert it"
            )
        fields = six.split()
    elif len(fields) != 6:
        raise CronError(_field_count_message(expr, fields))
    for text, field in zip(fields, _FIELDS):
        _check_field(text, field, expr)
    return " ".join(fields)


def _field_count_message(expr: str, fields: list[str]) -> str:
    expected = f"expected six cron fields ({_LAYOUT}), e.g. '0 0 2 * * *' for 02:00 daily"
    if len(fields) == 1 and fields[0].lower() in _DESCRIPTORS:
        return f"{expected}; got the descriptor {expr!r}, which is {_DESCRIPTORS[fields[0].lower()]!r}"
    return f"{expected}; got {len(fields)} field(s) in {expr!r}"


def _check_field(text: str, field: _Field, expr: str) -> None:
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None or match["step"] == "0":
            raise CronError(f"cron {expr!r}: {field.name} item {item!r} is not a value, range or */step")
        if match["range"] in ("*", "?"):
            continue
        for bound in match["range"].split("-"):
            _check_value(bound, field, expr)


def _check_value(text: str, field: _Field, expr: str) -> None:
    if text.isdigit():
        value = int(text)
    elif text.upper() in field.names:
        value = field.low + field.names.index(text.upper())
    else:
        value = -1
    if not field.low <= value <= field.high:
        allowed = f"{field.low}-{field.high}" + (f" or {field.names[0]}-{field.names[-1]}" if field.names else "")
        raise CronError(f"cron {expr!r}: {field.name} value {text!r} is outside {allowed}")
