"""What a wheel installs works without the checkout: the package and the device profiles it reads.

A stranger may ``pip install`` edgeconv rather than work in a clone; the profiles are data outside the
package, so the wheel carries them under ``share/edgeconv/devices`` and ``devices_dir()`` finds them there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_installed_wheel_finds_every_device_profile(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("edgeconv-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    # numpy and pyyaml come from this environment's site-packages; edgeconv only from the wheel.
    env = {k: v for k, v in os.environ.items() if k not in ("EDGECONV_DEVICES", "PYTHONPATH")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    probe = (
        "import converter, json\nfrom converter.devices import available_devices, devices_dir, load_device\n"
        "print(json.dumps([converter.__file__, str(devices_dir()), available_devices(),"
        " load_device('raspberry-pi-4').name]))"
    )
    ran = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False, cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    package, folder, names, loaded = json.loads(ran.stdout)
    assert Path(package).is_relative_to(venv), package  # the wheel's copy, not the checkout
    assert Path(folder) == venv / "share" / "edgeconv" / "devices"
    assert names == sorted(p.stem for p in (ROOT / "devices").glob("*.yaml"))
    assert loaded == "raspberry-pi-4"
    assert (Path(folder) / "vela" / "seeed-grove-vision-ai-v2.ini").is_file()
