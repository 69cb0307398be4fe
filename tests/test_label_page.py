"""``hpcdiff label`` end to end in headless Chromium: label with the keyboard, undo, reload."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _chromium_and_driver() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed with apt when missing and allowed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if (exe is None or driver is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300",
             "chromium", "chromium-driver"],
            capture_output=True, timeout=900,
        )  # fmt: skip
        exe = shutil.which("chromium")
        driver = shutil.which("chromedriver")
    if exe is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed and cannot be "
                    "installed here (needs root and apt)")  # fmt: skip
    return exe, driver


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A 12-frame simulated experiment on the small detector, random:0 weights, layer gap."""
    from hpcdiff.config import SimulateConfig
    from hpcdiff.simulate import simulate_experiment

    root = tmp_path_factory.mktemp("label-page")
    sim = simulate_experiment(
        SimulateConfig(n_frames=12, detector="small", truth_grid_size=8, processes=1,
                       frames_per_file=6, compression="none"),
        root / "sim",
    )  # fmt: skip
    job = Path(sim.job)
    job.write_text(
        job.read_text()
        + '\n[features]\nweights = "random:0"\nlayer = "gap"\nbatch_size = 4\n'
        + "\n[background]\nimage_size_px = 64\n"
    )
    return job


def _start(job: Path, labels: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcdiff", "label", str(job), "--port", "0",
         "--labels", str(labels)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if m:
            out = "".join(lines)
            assert "ssh -N -L" in proc.stdout.readline() + out
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("server did not print its URL:\n" + "".join(lines))


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


def test_label_frames_with_the_keyboard_undo_and_reload(experiment: Path, tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    exe, driver_path = _chromium_and_driver()
    labels = tmp_path / "labels.csv"
    proc, url = _start(experiment, labels)
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        wait = WebDriverWait(driver, 30)
        body = lambda name: driver.find_element("tag name", "body").get_attribute(name)  # noqa: E731

        def shown() -> tuple[str, str, str]:
            """Wait for a frame whose large view has loaded; its (row, file, index)."""
            wait.until(lambda d: body("data-row") not in ("", None) and body("data-busy") == "0")
            return body("data-row"), body("data-file"), body("data-index")

        def press(key: str, *, saved: int | None = None) -> tuple[str, str, str]:
            before = body("data-row")
            ActionChains(driver).send_keys(key).perform()
            if saved is not None:
                wait.until(lambda d: body("data-saved") == str(saved))
            wait.until(lambda d: body("data-row") != before and body("data-busy") == "0")
            return shown()

        driver.get(url)
        row, file, index = shown()
        assert "hpcdiff label" in driver.title
        for name in ("raw", "cnn"):
            wait.until(lambda d, n=name: d.execute_script(
                f"return document.getElementById('{n}').naturalWidth") > 0)  # fmt: skip
        assert driver.execute_script("return document.getElementById('view').width") > 10
        keys = driver.find_element("id", "keys").text
        assert "diffuse" in keys and "non-diffuse" in keys

        answers: list[tuple[str, str, str]] = []
        for k, key in enumerate("dndd"):
            answers.append((file, index, "diffuse" if key == "d" else "non-diffuse"))
            row, file, index = press(key, saved=k + 1)
        skipped = (file, index)
        row, file, index = press("s")  # skip: not labelled
        assert (file, index) != skipped
        # undo takes back the last answer and shows that frame again
        row, file, index = press(Keys.BACKSPACE)
        assert (file, index, "diffuse") == answers[-1]
        answers.pop()
        assert len(_read(labels)) == 3
        # a reload shows the same frame, and the page keeps working
        driver.refresh()
        row2, file2, index2 = shown()
        assert (file2, index2) == (file, index)
        answers.append((file, index, "non-diffuse"))
        press("n", saved=1)
        text = driver.find_element("tag name", "header").text
        assert "labelled 4 / 12" in text
    finally:
        driver.quit()
        out = _stop(proc)
    assert "stopped; 4 labels" in out, out
    got = _read(labels)
    expected = {(Path(f).name, int(i)): lab for f, i, lab in answers}
    assert {(Path(f).name, int(i)): lab for f, i, lab in got} == expected
    assert (Path(skipped[0]).name, int(skipped[1])) not in {
        (Path(f).name, int(i)) for f, i, _ in got
    }


def _read(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [(r["file"], r["index"], r["label"]) for r in rows]


def test_a_busy_port_is_a_clear_error(experiment: Path, tmp_path: Path, capsys):
    import socket

    from hpcdiff.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        rc = main(["label", str(experiment), "--port", str(port), "--no-compute",
                   "--labels", str(tmp_path / "labels.csv")])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err
