"""Errors convscope raises on purpose, importable without torch.

Every problem convscope detects in what it was given (a bad option, a damaged file, a run
folder that cannot be written) is a `ConvscopeError`: the CLI prints it as one line and exits
with status 2, and the Python API raises it as the builtin it also is (`UsageError` is a
ValueError, `MissingDataError` a FileNotFoundError), so `except ValueError` keeps working. Any
other exception is a bug, and the CLI shows its traceback.
"""


class ConvscopeError(Exception):
    """Base of the errors convscope raises on purpose; the message says what to do.
    `exit_code` is the CLI's for it."""

    exit_code = 2


class UsageError(ConvscopeError, ValueError):
    """An argument, file or folder that cannot be used: says what was received and what is
    expected."""


class MissingDataError(ConvscopeError, FileNotFoundError):
    """A dataset that is nowhere to be found; the message lists where convscope looked."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `convscope train`; the message says where and what to run next."""


class PeerLost(ConvscopeError):
    """Another process of a distributed run stopped; this one cannot go on. The launcher
    restarts the group (`--max-restarts`) or says how to resume. Its own exit code tells the
    launcher this process is not the cause."""

    exit_code = 4


class TrainingDivergedError(ConvscopeError, RuntimeError):
    """The loss or a gradient became NaN or infinite; the message says where and what to do."""

    exit_code = 3

    def __init__(self, message: str, epoch: int, batch: int, lr: float) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.lr = epoch, batch, lr


class WriteFailed(ConvscopeError, OSError):
    """A file of the run could not be written (a full disk, a read-only folder); the message
    says which, what was kept, and what to run next."""
