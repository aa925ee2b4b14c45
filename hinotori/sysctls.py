"""Kernel settings (sysctls): names, values, which ones a container may have, and defaults.

Shared by the spec (``[services.NAME] sysctls`` and the ``sysctl`` recipe step), the bake
(``/etc/sysctl.d/NN-hinotori.conf`` in an OS image), the container provider (the engine's
``HostConfig.Sysctls``) and ``checks generate`` (what a host changed). Pure: no I/O.

**Namespaced.** A container has its own network, IPC and mqueue namespaces but shares every
other kernel setting with the machine, so engines accept only ``net.*``, ``kernel.shm*``,
``kernel.msg*``, ``kernel.sem`` and ``fs.mqueue.*`` (runc's and crun's rule). Anything else
would change the machine for every host on it: refused in the spec, never passed on.

**Defaults.** ``KERNEL_DEFAULTS`` holds the values a fresh namespace gets from the kernel
itself for the commonly tuned namespaced settings, checked on Linux 6.x with ``unshare -n -i``.
Left out on purpose: settings a new namespace copies from the machine's (``ip_forward``,
``conf.all.*``, ``tcp_congestion_control``) and those the kernel scales with memory
(``tcp_rmem``, ``tcp_max_syn_backlog``, conntrack), whose "default" differs per machine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

NAMESPACED_TEXT = "net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*"
NAME = re.compile(r"[a-z][a-z0-9_]*(\.[A-Za-z0-9_\-/]+)+")
_NAMESPACED = re.compile(r"net\..+|kernel\.shm.+|kernel\.msg.+|kernel\.sem|fs\.mqueue\..+")
CONF_DIR = "/etc/sysctl.d"
LABEL = "hinotori.sysctls"  # the OS image label holding its sysctl steps' settings (JSON)

# The kernel's own values in a fresh namespace (64-bit); see the module docstring.
KERNEL_DEFAULTS: dict[str, str] = {
    "net.core.somaxconn": "4096",
    "net.ipv4.ip_local_port_range": "32768 60999",
    "net.ipv4.ip_unprivileged_port_start": "1024",
    "net.ipv4.ping_group_range": "1 0",
    "net.ipv4.ip_nonlocal_bind": "0",
    "net.ipv4.ip_default_ttl": "64",
    "net.ipv4.icmp_echo_ignore_all": "0",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_fin_timeout": "60",
    "net.ipv4.tcp_keepalive_time": "7200",
    "net.ipv4.tcp_keepalive_intvl": "75",
    "net.ipv4.tcp_keepalive_probes": "9",
    "net.ipv4.tcp_tw_reuse": "2",
    "net.ipv4.tcp_timestamps": "1",
    "net.ipv4.tcp_sack": "1",
    "net.ipv4.tcp_window_scaling": "1",
    "net.ipv4.tcp_fastopen": "1",
    "net.ipv4.tcp_slow_start_after_idle": "1",
    "net.ipv4.tcp_mtu_probing": "0",
    "net.ipv4.tcp_retries2": "15",
    "net.ipv4.tcp_syn_retries": "6",
    "net.ipv4.tcp_synack_retries": "5",
    "net.ipv6.bindv6only": "0",
    "net.unix.max_dgram_qlen": "10",
    "kernel.shmmax": "18446744073692774399",
    "kernel.shmall": "18446744073692774399",
    "kernel.shmmni": "4096",
    "kernel.shm_rmid_forced": "0",
    "kernel.msgmax": "8192",
    "kernel.msgmnb": "16384",
    "kernel.msgmni": "32000",
    "kernel.sem": "32000 1024000000 500 32000",
    "fs.mqueue.msg_max": "10",
    "fs.mqueue.msgsize_max": "8192",
    "fs.mqueue.queues_max": "256",
    "fs.mqueue.msg_default": "10",
    "fs.mqueue.msgsize_default": "8192",
}


def namespaced(name: str) -> bool:
    """Whether a container can have its own value of ``name`` (see the module docstring)."""
    return _NAMESPACED.fullmatch(name) is not None


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a sysctl name (dotted, as `sysctl -a` shows them, "
                         "e.g. \"net.core.somaxconn\")")
    return name


def check_value(value: object) -> str:
    """A value as sysctl writes it: a string, or an integer (written as its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\n\r\0"):
        raise ValueError(f"a sysctl value is a non-empty one-line string such as \"1024\" or "
                         f"\"32768 60999\" (got {value!r})")
    return value


def check_namespaced(name: str) -> str:
    if not namespaced(name):
        raise ValueError(f"{name} is not a namespaced sysctl: a container shares it with the "
                         f"machine and every host on it, so it cannot be set per host. Allowed "
                         f"are {NAMESPACED_TEXT}; set others on the machine itself")
    return name


def normalise(value: str) -> str:
    """Whitespace as /proc/sys prints multi-value settings (tabs) made comparable."""
    return " ".join(value.split())


def proc_path(name: str) -> str:
    """/proc/sys path of a name: dots are separators and a slash stands for a dot inside one
    component (``net.ipv4.conf.eth0/100.rp_filter`` is the VLAN interface ``eth0.100``)."""
    return "/proc/sys/" + name.translate(str.maketrans("./", "/."))


def conf_text(settings: Mapping[str, str]) -> str:
    """An /etc/sysctl.d file setting ``settings`` (in the order given)."""
    lines = ["# written by hinotori's sysctl recipe step"]
    lines += [f"{name} = {value}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def to_label(settings: Mapping[str, str]) -> str:
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def from_label(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The settings an image's ``LABEL`` recorded (none, or not ours: {})."""
    try:
        found = json.loads((labels or {}).get(LABEL) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
