"""A self-contained local lab for the demo, the end-to-end tests and the benchmark.

* :mod:`gateway.lab.ca`        test root CA and leaf certificates
* :mod:`gateway.lab.origin`    recording HTTP/HTTPS/TCP/UDP origin server
* :mod:`gateway.lab.dnsserver` authoritative DNS server for the lab zone
* :mod:`gateway.lab.topology`  ``Lab``: namespaces, veth, addresses, servers
* :mod:`gateway.lab.records`   JSON-lines record files and filters

Nothing here imports mitmproxy.
"""

from .ca import CA, make_ca
from .records import clear_records, decode_body, header, read_records
from .topology import (
    DEFAULT_HOSTS,
    DEFAULT_WRONG_CERT,
    FOREIGN_RESOLVER,
    GW_ADDR,
    LAB_NET,
    ORIGIN_ADDR,
    Lab,
    LabError,
    cleanup,
    default_records,
    in_netns,
)

__all__ = [
    "CA",
    "make_ca",
    "Lab",
    "LabError",
    "cleanup",
    "default_records",
    "in_netns",
    "read_records",
    "clear_records",
    "decode_body",
    "header",
    "DEFAULT_HOSTS",
    "DEFAULT_WRONG_CERT",
    "FOREIGN_RESOLVER",
    "GW_ADDR",
    "ORIGIN_ADDR",
    "LAB_NET",
]
