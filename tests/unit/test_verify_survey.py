"""Starter checks (`hinotori checks generate`) from a survey: the host's own port becomes
"$PORT", key files get a sha256, and the TOML written always loads as a spec."""

from __future__ import annotations

import tomllib

from hinotori.model import HealthCheck
from hinotori.spec import parse_spec
from hinotori.verify.survey import MAX_FILES, MAX_HASHED, starter_checks, to_toml

SURVEY = {
    "port": "43117",
    "sockets": [{"protocol": "tcp", "ip": "127.0.0.1", "port": 43117, "inode": 1},
                {"protocol": "tcp", "ip": "::", "port": 9100, "inode": 2},
                {"protocol": "tcp", "ip": "0.0.0.0", "port": 9100, "inode": 3},
                {"protocol": "udp", "ip": "0.0.0.0", "port": 5353, "inode": 4}],
    "processes": [{"comm": "python3", "argv": ["python3", "app.py"]},
                  {"comm": "worker", "argv": ["worker"]}, {"comm": "worker", "argv": ["w"]}],
    "files": [{"path": "app.py", "type": "file", "mode": "0444", "size": 900,
               "sha256": "a" * 64},
              {"path": "static", "type": "directory", "mode": "0555", "size": 0},
              {"path": "static/x \"quoted\".css", "type": "file", "mode": "0444", "size": 1,
               "sha256": "b" * 64},
              {"path": "current", "type": "symlink", "mode": "0777", "size": 6},
              *({"path": f"f{i:02d}", "type": "file", "mode": "0444", "size": i,
                 "sha256": f"{i:064x}"} for i in range(8))],
}


def generate() -> list[dict]:
    return starter_checks(SURVEY, port="43117", port_env="PORT", health=HealthCheck("/healthz"),
                          command=["python3", "./app.py"])


def test_what_a_host_has_becomes_checks() -> None:
    checks = generate()
    assert checks[0] == {"http": "/healthz", "status": 200}
    assert {"port": "$PORT", "listening": True} in checks
    assert {"port": 9100, "listening": True} in checks  # IPv4 and IPv6: one check
    assert sum(1 for c in checks if c.get("port") == 9100) == 1
    assert {"port": 5353, "listening": True, "protocol": "udp"} in checks
    assert {"process": "worker", "running": True, "count": 2} in checks
    assert {"env": "PORT", "value": r"^\d+$"} in checks
    app = next(c for c in checks if c.get("file") == "app.py")
    assert app == {"file": "app.py", "type": "file", "mode": "0444", "sha256": "a" * 64}
    hashed = [c["file"] for c in checks if "sha256" in c]
    assert len(hashed) == MAX_HASHED and hashed[0] == "app.py"  # the command's file first
    assert {"directory": "static", "mode": "0555"} in checks


def test_the_toml_loads_as_a_spec() -> None:
    text = to_toml("web", generate(), header="generated\nfrom a test", more_files=3)
    assert text.startswith("# generated\n# from a test\n# (3 more files")
    assert tomllib.loads(text)["services"]["web"]["checks"][0]["http"] == "/healthz"
    spec = parse_spec('[services.web]\ncommand = ["python3", "app.py"]\n\n' + text)
    checks = spec.services["web"].checks
    assert len(checks) == len(generate())
    assert any(c.target == 'static/x "quoted".css' for c in checks)


def test_many_files_are_capped() -> None:
    many = {**SURVEY, "files": [{"path": f"f{i:03d}", "type": "file", "mode": "0444",
                                 "size": i, "sha256": f"{i:064x}"} for i in range(200)]}
    checks = starter_checks(many, port=None, port_env="PORT", health=None, command=["f150"])
    files = [c for c in checks if "file" in c]
    assert len(files) == MAX_FILES + 1  # plus the command's own file, beyond the cap
    assert any(c["file"] == "f150" and "sha256" in c for c in files)
    assert not any("env" in c or "http" in c for c in checks)


def test_changed_kernel_settings_become_kernel_param_checks() -> None:
    survey = {**SURVEY, "sysctls": {
        "net.core.somaxconn": "4096",  # the kernel's default: nothing to say
        "net.ipv4.ip_unprivileged_port_start": "0",  # changed (by the engine, say)
        "net.ipv4.tcp_fin_timeout": "15",  # set by the service
        "net.ipv4.ip_forward": "1",  # not in the table (copied from the machine): never noise
        "kernel.msgmax": None,  # not on this kernel
    }}
    checks = starter_checks(survey, port="43117", port_env="PORT", health=None, command=["x"],
                            declared={"net.ipv4.tcp_fin_timeout": "15"})
    kernel = [c for c in checks if "kernel_param" in c]
    assert kernel == [
        {"kernel_param": "net.ipv4.ip_unprivileged_port_start", "value": "0",
         "title": "net.ipv4.ip_unprivileged_port_start = 0 (kernel default 1024)"},
        {"kernel_param": "net.ipv4.tcp_fin_timeout", "value": "15",
         "title": "net.ipv4.tcp_fin_timeout = 15 (set by the service)"}]
    text = to_toml("web", kernel)
    assert parse_spec('[services.web]\ncommand = ["x"]\n' + text).services["web"].checks
