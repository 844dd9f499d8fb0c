"""Errors convscope raises on purpose, importable without torch (the CLI catches them)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `convscope train` between two batches; the message says how to resume."""


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became NaN or infinite; the message says where and what to do."""

    def __init__(self, message: str, epoch: int, batch: int, lr: float) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.lr = epoch, batch, lr
