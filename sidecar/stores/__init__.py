"""Shared state: one Store protocol, an in-process and a Redis implementation."""
