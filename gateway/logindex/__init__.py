"""Querying the flow log: filters, a rebuildable SQLite index, output formats, HAR export.

The log (read through `gateway.log.reader`) stays the source of truth: the
index holds only the columns filters need and where each record sits in its
file; every result is read back from the log itself.
"""

from gateway.errors import EgressgwError


class QueryError(EgressgwError):
    """A query could not be run: bad filter value, unreadable log, unusable index."""
