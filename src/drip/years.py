"""The years a moment given by hand may fall in, apart from `drip.schedule` (which loads the
holiday calendars): `--now` is checked against them on every `drip send`, the idle one too."""

MIN_YEAR, MAX_YEAR = 1971, 9998
"""The years a moment given by hand (--now, a pause's end) may fall in: room for the lease,
back-off and schedule arithmetic on either side without leaving datetime's range."""
