"""An installed Phobos (not a checkout) finds its schema, BPF program and UI."""

import subprocess
import sys
import zipfile

import pytest

from api.storage.migrations import SQL_DIR


@pytest.mark.slow
def test_wheel_carries_data_and_finds_it_when_installed(tmp_path):
    root = SQL_DIR.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
        check=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("phobos-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for _, _, path in __import__("api.storage.migrations", fromlist=["x"]).schema_files():
        assert f"sql/{path.name}" in names
    assert "static/README.md" in names
    assert "tracer/bpf/phobos.c" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    probe = (
        "import api.storage.migrations as s; print(s.SQL_DIR); "
        "print(len(s.schema_files()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(target / "sql")
    assert int(out[1]) >= 1
