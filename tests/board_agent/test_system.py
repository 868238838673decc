"""What the agent says about its board: SoC from sysfs, BSP from os-release."""

from __future__ import annotations

from pathlib import Path

from board_agent import system


def test_describe_reads_an_imx8mp_soc_and_yocto_release(tmp_path: Path) -> None:
    soc = tmp_path / "soc0"
    soc.mkdir()
    (soc / "soc_id").write_text("i.MX8MP\n")
    (soc / "family").write_text("Freescale i.MX\n")
    (soc / "machine").write_text("NXP i.MX8MPlus EVK board\n")
    rel = tmp_path / "os-release"
    rel.write_text('ID=fsl-imx-xwayland\nPRETTY_NAME="NXP i.MX Release Distro 6.1-mickledore"\nVERSION_ID=6.1-mickledore\n')
    info = system.describe(str(soc), str(rel))
    assert (info["soc"], info["soc_id"], info["machine"]) == ("imx8mp", "i.MX8MP", "NXP i.MX8MPlus EVK board")
    assert (info["os"], info["os_version"]) == ("NXP i.MX Release Distro 6.1-mickledore", "6.1-mickledore")


def test_describe_without_sysfs_soc_is_empty_not_an_error(tmp_path: Path) -> None:
    info = system.describe(str(tmp_path / "absent"), str(tmp_path / "absent-release"))
    assert info["soc"] == "" and info["os"] == "" and info["kernel"]
