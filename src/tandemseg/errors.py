"""User-facing errors: every boundary raises these with a message saying what is wrong and how to fix it."""


class TandemsegError(Exception):
    """An error caused by the user's input (a path, a spec, a file); the CLI prints it as one line."""


class DataError(TandemsegError):
    """A dataset, image or label file is missing or malformed."""


class SpecError(TandemsegError):
    """A dataset, shift, model or policy spec string cannot be parsed."""


class CheckpointError(TandemsegError):
    """A checkpoint is missing, corrupt, or does not match the requested architecture/classes."""


class ServerFault(TandemsegError):
    """The cloud failed on a request through no fault of the request (out of memory, a crashed worker): a 503 the
    client may retry, never a 400 that tells it the frame was bad."""

    status = 503
