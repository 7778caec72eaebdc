"""The node's exceptions, one tree so callers can catch at the level they care about.

    NodeError
     ├── ConfigError          the configuration file is missing, unreadable or invalid
     ├── StoreError           an instance could not be made durable on disk
     │    └── DiskFullError   free space is below the configured watermark (or ENOSPC)
     ├── IndexError_          the SQLite index could not record or answer
     ├── InvalidInstanceError the received bytes are not a DICOM dataset we can index
     ├── PeerError            a remote AE is unknown, unreachable or answered a failure
     ├── VolumeError          a series is not one consistent 3-D volume (gap, mixed sizes, ...)
     ├── DeidentificationError an instance de-identification cannot make safe (never sent as it was)
     ├── PipelineError        a configured pipeline cannot be built (card, weights, runtime)
     ├── CommandFailed        a command module exited non-zero or timed out: worth another attempt
     ├── CommandOutputError   a command module's output is unusable: another attempt gives the same
     ├── TranscodeError       a stored instance cannot be decoded into what the peer accepted
     ├── PermanentJobError    retrying the job cannot help
     ├── NotApplicable        no pipeline of the route may analyse the series (each gate's reason)
     ├── JobNotSettled        a job ran but how it ended was not recorded (procrastinate retries)
     └── NotificationError    a notification not delivered: ``permanent`` when sending it again
                              cannot help (a RIS that answered AE or AR, a webhook's 4xx)

    LeaseLost                 not a failure of the node: the job's lease passed to another
                              worker, whose result counts; this one's is void

Errors that must be something else for a library stay beside their use: the rule language's
RuleError is a ValueError (pydantic reports it as a configuration error), and net/patches'
PduTooSlow a TimeoutError (pynetdicom's reader handles those).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ai.trust.gate import GateDecision


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


class DeidentificationError(NodeError):
    """An instance the engine cannot de-identify (it is then not sent, never sent as it was)."""


class PipelineError(NodeError):
    """A configured pipeline cannot be built: its card, weights or runtime is missing or bad."""


class CommandFailed(NodeError):
    """The program exited non-zero or ran past its timeout: worth another attempt."""


class CommandOutputError(NodeError):
    """The program's output is unusable: another attempt would give the same."""


class TranscodeError(NodeError):
    """The stored instance cannot be decoded into the encoding the peer accepted."""


class NotificationError(NodeError):
    """A notification was not delivered; ``permanent``: sending it again cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class PermanentJobError(NodeError):
    """Retrying the job cannot help (the series is not a volume, the pipeline does not exist)."""


class NotApplicable(NodeError):
    """No pipeline of the job's route may analyse the series: each one's gate decision."""

    def __init__(self, declined: list[tuple[str, str, GateDecision]], source: Any = None) -> None:
        self.declined = declined  # (pipeline name, "model version", decision)
        self.source = source  # the SeriesVolume, for the report that says so
        super().__init__(self.reasons())

    def reasons(self) -> str:
        return " | ".join(f"{name} ({model}): {decision.summary()}" for name, model, decision in self.declined)


class JobNotSettled(NodeError):
    """A job's worker ran it but could not record how it ended: procrastinate retries the task,
    whose start takes the job over at its next attempt."""


class LeaseLost(Exception):
    """The job's lease expired and another worker may hold it now; this worker's result is void."""
