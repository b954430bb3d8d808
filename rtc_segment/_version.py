"""The version of rtc_segment, in one place (read by the build backend too)."""

__version__ = "0.1.0"
