"""The exception hierarchy. Entry points map these to messages and exit codes.

Every error the library raises on purpose derives from `DripError`; its message says what is
wrong and what to do about it, so the CLI can print it as it is.
"""


class DripError(Exception):
    """Base of every error drip raises on purpose."""

    exit_code = 1


class ConfigError(DripError):
    """A setting (environment variable, course.toml, CLI option) is missing or invalid."""

    exit_code = 2


class UsageError(DripError):
    """The user asked for something that cannot be done as asked (bad argument, bad file)."""

    exit_code = 2


class CourseError(DripError):
    """The course on disk cannot be loaded (missing or unreadable file, broken front matter,
    invalid course.toml): a configuration error, exit code 2."""

    exit_code = 2
