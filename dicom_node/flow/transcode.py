"""Forwarding to a peer that does not take the stored transfer syntax: the instance goes out
decompressed, in a syntax every Storage SCP must accept, instead of a delivery that retries
until it is dead-lettered.

A forwarded instance is queued with three encodings (outbox candidates): as it was received,
Explicit VR Little Endian and Implicit VR Little Endian (the DICOM default every SCP accepts).
The sender offers all three and sends the first the peer accepted for the whole series; the
originals go byte for byte whenever the peer takes them. Only when it picked an uncompressed
encoding that is not the file's own is the file read, its pixel data decoded (pydicom with the
pylibjpeg / pyjpegls decoders the project installs) and the dataset sent in that encoding.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import TranscodeError

#: Variant name -> transfer syntax of the uncompressed alternatives queued for a forward.
UNCOMPRESSED_VARIANTS = {"explicit-le": ExplicitVRLittleEndian, "implicit-le": ImplicitVRLittleEndian}


def stored_syntax(path: str | Path) -> UID:
    return UID(str(read_file_meta_info(path).TransferSyntaxUID))


def for_sending(path: str | Path, transfer_syntax: str) -> str | Dataset:
    """What to hand pynetdicom's ``send_c_store`` for the stored file ``path`` in
    ``transfer_syntax``: the path itself when that is the file's own syntax (sent as stored),
    else the decoded dataset in that (uncompressed) syntax."""
    own = stored_syntax(path)
    target = UID(transfer_syntax)
    if own == target:
        return str(path)
    if target not in UNCOMPRESSED_VARIANTS.values():
        raise TranscodeError(f"{path}: cannot re-encode {own.name} as {target.name}; only decompression is done")
    try:
        ds = dcmread(path)
        if own.is_compressed:
            # The same instance in another transfer syntax keeps its SOP Instance UID (PS3.5
            # 10: a lossless re-encoding); pydicom would otherwise make a new one.
            ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this instance's, said on its delivery
        raise TranscodeError(f"{path}: cannot decode its {own.name} pixel data: {type(exc).__name__}: {exc}") from None
    ds.file_meta.TransferSyntaxUID = target
    # pynetdicom encodes a dataset as its "original encoding" says; make that the target's.
    ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian, ds.original_character_set)
    return ds
