"""Errors meant for a person: the CLI prints their message as one sentence, without a traceback."""


class CtsegError(RuntimeError):
    """A failure the user can act on (bad input, failed validation gate, unreachable host...)."""
