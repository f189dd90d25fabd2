"""Phobos host tracer: kernel TCP connection tracing, aggregation and shipping."""
