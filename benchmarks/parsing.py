"""How much does turning a GetSegmentTask answer into models cost on top of ``json.loads``?

Parses the documented example response (the 返回示例 section of the service's docs) and
prints, per response, the median over repeats of:

* ``json.loads`` alone;
* ``json.loads`` + ``structure_task`` of ``Result.SegmentTask``;
* ``json.loads`` + ``structure_task`` + ``structure_metadata`` of ``ResponseMetadata``;

and the ratio of each to ``json.loads`` alone.

Usage: ``python benchmarks/parsing.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtc_segment._converter import structure_metadata, structure_task

# The documented example response of GetSegmentTask (2022-06-01), verbatim (shared with
# the converter's tests).
EXAMPLE = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "documented_response.json"
).read_text(encoding="utf-8")


def loads_only() -> object:
    """Baseline: decoding the JSON text."""
    return json.loads(EXAMPLE)


def loads_and_task() -> object:
    """Decoding plus structuring the task."""
    body = json.loads(EXAMPLE)
    return structure_task(body["Result"]["SegmentTask"])


def loads_task_and_metadata() -> object:
    """Decoding plus structuring the task and the response metadata, as the client does."""
    body = json.loads(EXAMPLE)
    return (
        structure_task(body["Result"]["SegmentTask"]),
        structure_metadata(body["ResponseMetadata"]),
    )


def median_us(fn: Callable[[], object], *, number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean time of one call, in microseconds."""
    timer = timeit.Timer(fn)
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args(argv)
    number, repeat = (2_000, 5) if args.quick else (20_000, 15)

    loads_and_task()  # warm up (and fail early if the example stops parsing)
    baseline = median_us(loads_only, number=number, repeat=repeat)
    rows = [
        ("json.loads", baseline),
        ("json.loads + structure_task", median_us(loads_and_task, number=number, repeat=repeat)),
        (
            "json.loads + structure_task + structure_metadata",
            median_us(loads_task_and_metadata, number=number, repeat=repeat),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"Python {sys.version.split()[0]}; median of {repeat} x {number} calls")
    print(f"{'operation':<{width}}  {'µs/response':>11}  {'ratio':>6}")
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:>11.2f}  {micros / baseline:>6.2f}")


if __name__ == "__main__":
    main()
