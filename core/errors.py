"""User-facing errors: each says what was wrong, the value seen and what to do."""


class TransferScopeError(Exception):
    """An error caused by user input or environment; shown as one line, CLI exit code 2."""


class DataError(TransferScopeError):
    """The dataset folder or an image in it cannot be used."""


class BackboneError(TransferScopeError):
    """Unknown backbone name or weights that cannot be loaded."""


class ClassWeightError(TransferScopeError):
    """A class-weight scheme or custom weight table is invalid."""


class ConfigError(TransferScopeError):
    """An experiment setting is out of range or inconsistent."""


class RunStoreError(TransferScopeError):
    """A run record or bundle is missing, corrupt or unsafe."""


class StorageError(TransferScopeError):
    """A file or folder cannot be written: disk full, no permission, a folder or file in the way."""


class ReadOnlyError(TransferScopeError):
    """An action was refused because the dashboard is shared read-only and this session is not the owner's."""


class Cancelled(Exception):
    """Raised inside a job when the user asked to cancel it."""


class StoppedEarly(Cancelled):
    """A fine-tune the user stopped after a validated epoch: its best epoch so far was saved as a run (the message
    says which); the rest of the job is cancelled."""
