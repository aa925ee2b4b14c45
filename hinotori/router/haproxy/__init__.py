"""HAProxy as the data plane: the controller writes haproxy.cfg, runs HAProxy in master-worker
mode detached from itself, and makes every routine change through the Runtime API.

    config.py    RoutingTable -> Plan (backends, servers, release maps) -> haproxy.cfg
    runtime.py   the Runtime API over the worker's stats socket and the master socket
    process.py   start, adopt, seamless reload and stop of the HAProxy master
    stats.py     per-host counters from ``show stat``; latency histogram from a log socket
    router.py    HaproxyRouter: the Router protocol on top of the four
"""

from hinotori.router.haproxy.router import HaproxyRouter

__all__ = ["HaproxyRouter"]
