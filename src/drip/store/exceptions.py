"""The errors the store raises. Each is a `DripError`: the CLI prints it and exits with
`exit_code`."""

from __future__ import annotations

from drip.errors import DripError


class SuppressedAddressError(DripError):
    """The address unsubscribed, bounced or complained: it is never re-subscribed silently."""

    exit_code = 2


class NotFoundError(DripError):
    """No subscriber or delivery with the given id."""

    exit_code = 2


class StateError(DripError):
    """The row is not in a state that allows the requested change."""

    exit_code = 2
