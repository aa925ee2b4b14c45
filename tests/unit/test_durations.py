import pytest

from hinotori.durations import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("10s", 10), ("1m30s", 90), ("24h", 86400), ("1.5s", 1.5), ("2d", 172800),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "10 s", "1x", "-1s", "10s5"])
def test_bad_durations_say_the_accepted_form(text: str) -> None:
    with pytest.raises(ValueError, match="write a number with a unit"):
        parse_duration(text)


def test_format_and_sizes() -> None:
    assert format_duration(0.25) == "250ms"
    assert format_duration(90) == "90s"
    assert parse_size("64MiB") == 64 * 1024**2
    with pytest.raises(ValueError):
        parse_size("lots")
