"""Metrics, traces and decision logs (CONTRACT.md section 5)."""
