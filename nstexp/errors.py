"""Errors the user can fix. The command line prints them as one line, without a traceback."""


class NstexpError(Exception):
    """A problem with the user's input or environment, described in one line."""


class ConfigError(NstexpError):
    """A config value that is not allowed."""
