"""The node's exceptions, one tree so callers can catch at the level they care about.

    NodeError
     ├── ConfigError          the configuration file is missing, unreadable or invalid
     ├── StoreError           an instance could not be made durable on disk
     │    └── DiskFullError   free space is below the configured watermark (or ENOSPC)
     ├── IndexError_          the SQLite index could not record or answer
     ├── InvalidInstanceError the received bytes are not a DICOM dataset we can index
     ├── PeerError            a remote AE is unknown, unreachable or answered a failure
     └── VolumeError          a series is not one consistent 3-D volume (gap, mixed sizes, ...)
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration cannot be used; the message names the key and the rule broken."""


class StoreError(NodeError):
    """Writing an instance to its final place failed; nothing was acknowledged."""


class DiskFullError(StoreError):
    """The storage folder's free space is under the watermark, or the disk is full."""


class IndexError_(NodeError):  # noqa: N801 - trailing underscore avoids the builtin name
    """The index database failed to record or read rows."""


class InvalidInstanceError(NodeError):
    """Received bytes that do not parse as a DICOM dataset with the attributes we need."""


class PeerError(NodeError):
    """A remote application entity is unknown, unreachable or refused the request."""


class VolumeError(NodeError):
    """A series cannot be turned into one consistent 3-D volume (the message says why)."""
