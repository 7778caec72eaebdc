"""``dicom-node``: the operator's command line.

Exit codes scripts can trust: 0 success; 1 the work ran but something failed (an instance
refused, a peer answered a failure); 2 bad usage or configuration; 3 a peer could not be
reached or refused the association. Every failure prints one line saying why.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
