"""What this board is: SoC and OS release, read once from sysfs and /etc, for the client's labels."""

from __future__ import annotations

import os
import platform
import re

# the kernel's SoC bus device; on an i.MX 8M Plus soc_id reads "i.MX8MP" and family "Freescale i.MX"
SOC_DIR = "/sys/devices/soc0"
OS_RELEASE = "/etc/os-release"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def soc_label(soc_id: str) -> str:
    """A label value from the kernel's soc_id: "i.MX8MP" -> "imx8mp"; "" when unknown."""
    return re.sub(r"[^a-z0-9]+", "", soc_id.lower())


def os_release(path: str = OS_RELEASE) -> dict[str, str]:
    """KEY=value pairs of os-release (quotes removed); empty when the file is missing."""
    out: dict[str, str] = {}
    for line in _read(path).splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip().strip('"')
    return out


def describe(soc_dir: str = SOC_DIR, release_path: str = OS_RELEASE) -> dict[str, str]:
    """{"soc", "soc_id", "soc_family", "machine", "os", "os_version", "kernel"}; unknown values are ""."""
    soc_id = _read(os.path.join(soc_dir, "soc_id"))
    rel = os_release(release_path)
    return {
        "soc": soc_label(soc_id),
        "soc_id": soc_id,
        "soc_family": _read(os.path.join(soc_dir, "family")),
        "machine": _read(os.path.join(soc_dir, "machine")) or platform.machine(),
        "os": rel.get("PRETTY_NAME", ""),
        # NXP's Yocto images put the BSP release here, e.g. "6.1-mickledore"
        "os_version": rel.get("VERSION_ID", "") or rel.get("VERSION", ""),
        "kernel": platform.release(),
    }
