"""One exception family. Each subclass carries the exit code the CLI turns it into."""


class UnetcliError(Exception):
    """A problem the user can fix. The message says what is wrong and how to fix it."""

    exit_code = 1


class UsageError(UnetcliError):
    """Options that contradict each other or name something that does not exist."""

    exit_code = 2


class DataError(UnetcliError):
    """Bad input data: unreadable images, unmatched pairs, mask values that are not classes."""

    exit_code = 3


class OutputError(UnetcliError):
    """An output location that cannot be written (read-only, full disk, would overwrite an input)."""

    exit_code = 3


class SaveFailedError(OutputError):
    """A model folder that could not be saved during training, at the second try either. The message says
    which folder, why, and where the run can go on from (the previous model-last/ is left as it was)."""


class ModelFolderError(UnetcliError):
    """A model folder that is missing files, has a wrong format version or cannot be loaded."""

    exit_code = 4


class UnetcliWarning(UserWarning):
    """Something the user should know that does not stop the work. Library code issues these with
    `warnings.warn`; the CLI renders each as one `warning:` line (library code never prints)."""


class CompileFailedWarning(UnetcliWarning):
    """torch.compile failed at its first call; the work goes on with the eager model."""

    def __init__(self, reason: str, doing: str):
        super().__init__(f"torch.compile failed ({reason}); {doing} without it")
        self.reason, self.doing = reason, doing


def first_line(err: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message` of an exception from a library, short enough for one error line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:limit] if text else ''}"


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_PARTIAL = 5
EXIT_INTERRUPTED = 130
