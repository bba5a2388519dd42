"""The one exception type that leaves meshnet/kernel/: library errors are converted here."""


class KernelError(OSError):
    """A kernel operation failed; the message says which and why."""
