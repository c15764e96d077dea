"""scripts/install_test_deps.sh (called by `make setup`) installs every system binary the suite uses."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "install_test_deps.sh"


def _array(name: str) -> list[str]:
    (body,) = re.findall(rf"^{name}=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    return body.split()


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_binary_a_test_looks_up_is_installed_by_the_script():
    # The suite finds system tools with shutil.which(...); each must be one the script checks
    # for (and so installs). A new tool in a test without the script fails here, not only in CI.
    wanted = set()
    for source in (REPO_ROOT / "tests").glob("*.py"):
        wanted |= set(re.findall(r'shutil\.which\("([^"]+)"\)', source.read_text()))
    assert wanted, "no shutil.which lookups found: the pattern is stale"
    assert wanted <= set(_array("BINARIES")), sorted(wanted - set(_array("BINARIES")))


def test_only_debian_packages_and_no_system_daemon_is_left_running():
    text = SCRIPT.read_text()
    assert re.search(r'apt-get install -y -qq --no-install-recommends "\$\{PACKAGES\[@\]\}"', text)
    assert not re.search(r"\b(curl|wget)\s+(-\S+\s+)*https?://", text), "downloads from outside Debian"
    # Debian starts nginx (port 80) and prometheus (9090) on install unless policy-rc.d says no.
    assert "policy-rc.d" in text and "exit 101" in text


def test_a_second_run_changes_nothing():
    # Idempotent: with everything installed (as after `make setup`) it touches no package.
    if not all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in _array("BINARIES")):
        pytest.skip("not every binary is installed here; the first run would install them")
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
