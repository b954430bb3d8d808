"""The ``rtc-segment`` command, split into small modules; :mod:`rtc_segment.cli` is its entry."""
