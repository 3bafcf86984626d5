"""The README's set-up paragraph names every package tests/setup.sh
installs (issue 12: a new user reads the list, not the script)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_packages():
    script = (ROOT / "tests" / "setup.sh").read_text()
    apt = re.findall(r"need_apt\+=\(([\w.+-]+)\)", script)
    modules = re.search(r"for mod in ([^;]+);", script).group(1).split()
    renamed = dict(re.findall(r"(\w+)\) pkgs\+=\(([\w.-]+)\)", script))
    pip = [renamed.get(m, m) for m in modules]
    return apt, pip


def test_setup_script_is_read():
    apt, pip = setup_packages()
    # Would pass vacuously if the patterns stopped matching the script.
    assert "fetchmail" in apt and "dovecot-pop3d" in apt, apt
    assert "pytest-xdist" in pip and "dkimpy" in pip, pip


def test_readme_names_every_package_setup_installs():
    apt, pip = setup_packages()
    readme = (ROOT / "README.md").read_text()
    missing = [p for p in apt + pip if f"`{p}`" not in readme]
    assert not missing, f"README's set-up list lacks {missing}"
