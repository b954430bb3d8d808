"""rtc_segment: an asyncio client for the Volcengine RTC ``GetSegmentTask`` API."""

__version__ = "0.1.0"
