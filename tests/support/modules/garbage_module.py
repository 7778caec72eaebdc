"""Writes a file named like a DICOM result that is not DICOM."""

import os
from pathlib import Path

Path(os.environ["MERCURE_OUT_DIR"], "result.dcm").write_bytes(os.urandom(4096))
