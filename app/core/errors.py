"""Typed errors of app.core.  Each subclasses the built-in it behaves like and its message says what to do next.

The CLI maps every ``DistillDeskError`` (and kernels'/quantizer's errors) to exit code 2 and one line; the GUI
maps them to one dialog in one place.  Add new classes here, next to their family.
"""
from __future__ import annotations


class DistillDeskError(Exception):
    """Base of every app.core error."""


# ---- engine / models ------------------------------------------------------------------------------------------
class EngineError(DistillDeskError, RuntimeError):
    """Inference failed."""


class ModelLoadError(EngineError, ValueError):
    """The file is not a loadable GGUF (missing, truncated, corrupt, unsupported architecture, too big for RAM)."""


class EngineSettingError(EngineError, ValueError):
    """A load setting is nonsense (a negative or non-integer context size, ...)."""


class GpuUnavailableError(EngineError):
    """GPU layers were asked for but this llama.cpp build has no GPU offload."""


class DeviceError(EngineError, ValueError):
    """A device setting names no device that exists (or a GPU module cannot be loaded)."""


class WorkerUnreachableError(EngineError, ConnectionError):
    """An RPC worker (``distilldesk worker``) cannot be reached or is not a compatible worker (names the endpoint)."""


class WorkerLostError(EngineError, ConnectionError):
    """An RPC worker went away while a model ran on it (names the endpoint); the model must be loaded again."""


class ContextOverflowError(EngineError, ValueError):
    """The prompt does not fit in the context window."""


class EngineBusyError(EngineError):
    """The model is already generating (one owner per loaded model): wait for the reply or cancel it first."""


class ChatTemplateError(EngineError, ValueError):
    """The model's chat template is invalid, unsafe, or refused the conversation."""


class GenerationCancelled(EngineError):
    """Generation was stopped by the user (not an error to show, but a clean way out)."""


# ---- comparison -----------------------------------------------------------------------------------------------
class CompareError(DistillDeskError, ValueError):
    """Two models cannot be compared."""


class VocabMismatchError(CompareError):
    """Reference and candidate use different vocabularies: they are not quantizations of the same model."""


# ---- probes ---------------------------------------------------------------------------------------------------
class ProbeSetError(DistillDeskError, ValueError):
    """A probe set file is not valid (the message names the file and line and what to fix)."""


class ProbeRunError(DistillDeskError, RuntimeError):
    """A probe run cannot go on (its stored state does not match, or decoding failed)."""


# ---- hub / downloads ------------------------------------------------------------------------------------------
class HubError(DistillDeskError, OSError):
    """A download or Hub query failed."""


class RepoNotFoundError(HubError):
    """The repo, revision or file does not exist (HTTP 404)."""


class HubAuthError(HubError, PermissionError):
    """401/403: gated or private repo, or a bad token."""


class OfflineError(HubError, ConnectionError):
    """No network (or HF_HUB_OFFLINE=1) and the files are not in the local cache."""


class IntegrityError(HubError):
    """A downloaded file's size or sha256 differs from the Hub's metadata."""


class UnsupportedRepoError(HubError, ValueError):
    """The repo has nothing DistillDesk can convert (no safetensors weights, or an unsupported architecture)."""


class DiskSpaceError(DistillDeskError, OSError):
    """Not enough free disk for the job."""


class DataFolderError(DistillDeskError, OSError):
    """DistillDesk's data or cache folder cannot be created or used (a file is in the way, no permission)."""


class DownloadCancelled(HubError):
    """The user cancelled a download (the partial file is kept for resume)."""


# ---- history --------------------------------------------------------------------------------------------------
class HistoryError(DistillDeskError, RuntimeError):
    """The chat history database failed."""


class CorruptHistoryError(HistoryError):
    """The history database was corrupt; it has been set aside (the message names where)."""


# ---- importance matrix ----------------------------------------------------------------------------------------
class ImatrixError(DistillDeskError, RuntimeError):
    """Computing an importance matrix failed."""


class CalibrationTextError(ImatrixError, ValueError):
    """The calibration text cannot be used (too short for one chunk, unreadable, empty)."""


class ImatrixCancelled(ImatrixError):
    """The user cancelled the importance-matrix run (no file is left behind)."""


class SensitivityCancelled(ImatrixCancelled):
    """The user cancelled the measured-sensitivity run of a *_D recipe (nothing is cached)."""
