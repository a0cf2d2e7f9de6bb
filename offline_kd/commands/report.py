"""`offline-kd report`: compare trained runs in one Markdown table with plots (offline_kd.training.report does the work)."""

from __future__ import annotations

from offline_kd.training import report


def run(*args, **kwargs) -> dict:
    """-> {rows, report, ...} (the signature of offline_kd.training.report.run)."""
    return report.run(*args, **kwargs)
