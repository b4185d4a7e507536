"""The progress meter on a non-terminal (CI, a Ray Job's log): exact throttling with an injected
clock, and the final line's totals and rate."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from raydeep.progress_bar import Meter, duration, rate_text, size_text, step


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=200), buf


def test_unknown_total_prints_at_most_every_ten_seconds_then_the_totals():
    console, buf = plain()
    clock = Clock()
    m = Meter("scanning", "records", console=console, clock=clock)
    for _ in range(95):  # 1 record every 0.25 s for 23.75 s
        clock.now += 0.25
        m.advance()
    assert m.lines == ["scanning: records 40, 4.0 records/s, 10.0 s elapsed",
                       "scanning: records 80, 4.0 records/s, 20.0 s elapsed"]
    clock.now += 0.25
    assert m.close() == "scanning: records 95 in 24.0 s, 4.0 records/s"
    assert buf.getvalue().splitlines() == m.lines
    assert m.close() == m.lines[-1] and len(m.lines) == 3  # once


def test_known_total_prints_per_tenth_no_more_often_than_every_ten_seconds():
    console, _ = plain()
    clock = Clock()
    m = Meter("evaluating", "rows", total=1000, console=console, clock=clock)
    clock.now += 9.9
    m.advance(500)  # half done, but only 9.9 s: no line yet
    assert m.lines == []
    clock.now += 0.1
    m.advance(0)  # 10 s: due, and past the 10% mark
    assert m.lines == ["evaluating: rows 500/1,000 (50%), 50 rows/s, 10.0 s elapsed, ETA 10.0 s"]
    clock.now += 15
    m.advance(50)  # 550: the next mark is 600, and less than a minute has passed: silent
    assert len(m.lines) == 1
    clock.now += 45
    m.tick()  # a minute without a line: one anyway
    assert m.lines[-1] == "evaluating: rows 550/1,000 (55%), 7.9 rows/s, 1:10 elapsed, ETA 57.3 s"
    clock.now += 10
    m.advance(50)  # 600: the mark after 550 is 600
    assert m.lines[-1].startswith("evaluating: rows 600/1,000 (60%)") and len(m.lines) == 3
    m.note("batches 3")
    clock.now += 20
    m.advance(400)
    assert m.lines[-1] == "evaluating: rows 1,000/1,000 (100%), 10 rows/s, 1:40 elapsed, batches 3"
    assert m.close() == "evaluating: rows 1,000/1,000 in 1:40, 10 rows/s; batches 3"


def test_a_fast_step_prints_only_its_final_line():
    console, buf = plain()
    clock = Clock()
    with Meter("writing", "shards", total=4, console=console, clock=clock) as m:
        for _ in range(4):
            clock.now += 0.5
            m.advance()
    assert buf.getvalue() == "writing: shards 4/4 in 2.0 s, 2.0 shards/s\n"


def test_an_error_inside_the_block_prints_no_final_line():
    console, buf = plain()
    with pytest.raises(ValueError):
        with Meter("writing", "rows", console=console, clock=Clock()) as m:
            m.advance(3)
            raise ValueError("boom")
    assert buf.getvalue() == ""


def test_step_prints_a_start_line_and_its_duration():
    console, buf = plain()
    clock = Clock()
    with step("consolidating checkpoint_000001", console=console, clock=clock) as s:
        clock.now += 3.14
        s.result = "12 tensors"
    assert s.seconds == pytest.approx(3.14)
    assert buf.getvalue().splitlines() == ["consolidating checkpoint_000001 ...",
                                           "consolidating checkpoint_000001: 12 tensors in 3.1 s"]


def test_a_terminal_gets_a_live_bar_and_the_same_final_line():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    clock = Clock()
    with Meter("evaluating", "rows", total=10, console=console, clock=clock) as m:
        clock.now += 1
        m.advance(10)
    assert m.lines == ["evaluating: rows 10/10 in 1.0 s, 10 rows/s"]
    assert "evaluating: rows 10/10 in 1.0 s, 10 rows/s" in buf.getvalue()


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (12.34, "12.3 s"), (125, "2:05"), (3725, "1:02:05")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_rates_and_sizes():
    assert rate_text(12_345, 2, "rows") == "6,172 rows/s"
    assert rate_text(3, 2, "shards") == "1.5 shards/s"
    assert rate_text(0, 2, "rows") == "0.0 rows/s" and rate_text(5, 0, "rows") == "- rows/s"
    assert size_text(512) == "512 B" and size_text(1_234_567) == "1.2 MB"
