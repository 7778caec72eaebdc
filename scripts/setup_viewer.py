#!/usr/bin/env python3
"""Fetch OHIF's prebuilt viewer once (``npm pack @ohif/app@3.13.2``) into the git-ignored
``.cache/ohif/`` folder, where ``dicom-node demo --viewer`` and tests/tools/test_viewer.py find it.
They fetch it themselves when it is missing; this script only does it ahead of time.

    .venv/bin/python scripts/setup_viewer.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.tools.viewer import OHIF_VERSION, fetch_ohif  # noqa: E402


def main() -> int:
    dist = fetch_ohif()
    print(f"OHIF {OHIF_VERSION}: {dist} ({sum(1 for _ in dist.rglob('*'))} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
