"""The page of `asr serve` in real headless Chromium (Selenium driving the system chromedriver).

Chromium's fake microphone plays a WAV of known words (``--use-file-for-fake-audio-capture``); the page
captures it with getUserMedia and an AudioWorklet, resamples it to 16 kHz and streams it over the
WebSocket, and the test waits for the words on the page. A file chosen or dropped on the page must give
the server's own transcript and downloads. The test skips only where Chromium is not installed, and fails
then in CI. ``ASR_SCREENSHOT_DIR=docs`` keeps the page's screenshot (the README's picture).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _need(what: str, hint: str):
    if IN_CI:
        pytest.fail(f"{what} is missing in CI: {hint}")
    pytest.skip(f"{what} is not installed: {hint}")


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    _need("selenium", "pip install -e '.[dev]'")

from conftest import word_edit_distance  # noqa: E402  (after selenium's check, as serve_helper is)

try:
    from serve_helper import http, running_server
except ImportError as e:
    _need(f"asr[serve] ({e.name})", "pip install -e '.[dev]'")

SR = 16000


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        _need("chromium / chromium-driver", "apt-get install chromium chromium-driver (scripts/setup.sh does it as root)")
    return browser, driver


@pytest.fixture(scope="module")
def mic_wav(tiny_corpus, tmp_path_factory):
    """Four tiny-corpus words with pauses, then 1.5 s of silence: (path, texts)."""
    import soundfile as sf

    from asr.audio import load_audio

    utts = tiny_corpus.utts[:4]
    parts = [np.zeros(int(0.5 * SR), np.float32)]
    for u in utts:
        parts += [load_audio(u.audio), np.zeros(int(0.9 * SR), np.float32)]
    parts.append(np.zeros(int(1.5 * SR), np.float32))
    path = tmp_path_factory.mktemp("browser") / "mic.wav"
    sf.write(path, np.concatenate(parts), SR, subtype="PCM_16")
    return path, [u.text for u in utts]


@pytest.fixture(scope="module")
def page(tiny_model_dir, mic_wav):
    """(driver, server URL): the page open in headless Chromium whose microphone plays ``mic_wav``."""
    import torch

    import asr

    browser, driver_path = _chromium()
    torch.set_num_threads(1)
    recognizer = asr.load_model(tiny_model_dir)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,1100", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic_wav[0]}%noloop",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    with running_server(recognizer) as srv:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        try:
            driver.set_script_timeout(60)
            driver.get(srv.url + "/")
            WebDriverWait(driver, 30).until(lambda d: "ready" in d.find_element(By.ID, "status").text)
            yield driver, srv.url
        finally:
            driver.quit()


def _texts(driver, container: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"#{container} .final .text")]


def _screenshot(driver, tmp_path: Path) -> None:
    shot = tmp_path / "serve-page.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank image
    keep = os.environ.get("ASR_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def _assert_hears_the_words(got: list[str], texts: list[str]) -> None:
    """Allow one miss of the four: the page is on trial here, not the model. The session's tiny model (20
    clips of one voice, trained until it gets them right) missed one of these words in 1 of 4 seeds we
    tried, and in CI on 2026-12-02: cut from a longer recording, a clip has digital silence around it
    that flite's own clips never have. The file tests check the page against the server's transcript exactly."""
    assert len(got) == len(texts), got
    assert word_edit_distance(texts, got) <= 1, (got, texts)


def test_microphone_streams_and_the_words_appear(page, mic_wav, tmp_path):
    driver, _ = page
    _, texts = mic_wav
    driver.find_element(By.ID, "mic").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "mic").text == "Stop")
    assert "16000 Hz" in driver.find_element(By.ID, "status").text
    WebDriverWait(driver, 90).until(lambda d: len(_texts(d, "finals")) >= len(texts))
    driver.find_element(By.ID, "mic").click()
    WebDriverWait(driver, 30).until(lambda d: "done" in d.find_element(By.ID, "status").text)
    # Captured at the device's rate and resampled in the worklet, the samples differ from the file's, so
    # the fragile tiny model is held to the words, not to the server's transcript of the file.
    _assert_hears_the_words(_texts(driver, "finals"), texts)


def _server_transcript(url: str, wav: Path, fmt: str) -> bytes:
    status, _, body = http("POST", f"{url}/v1/transcribe?format={fmt}", wav.read_bytes())
    assert status == 200, body
    return body


def _downloads(driver) -> dict[str, str]:
    script = """const done = arguments[arguments.length - 1];
    Promise.all(["txt", "srt", "vtt"].map((f) => fetch(document.getElementById("dl-" + f).href)
      .then((r) => r.text()))).then(done);"""
    return dict(zip(["txt", "srt", "vtt"], driver.execute_async_script(script)))


def _check_file_result(driver, url: str, wav: Path) -> None:
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "downloads").is_displayed())
    server = json.loads(_server_transcript(url, wav, "json"))
    assert _texts(driver, "file-text") == [s["text"] for s in server["segments"]]
    got = _downloads(driver)
    for fmt in ("txt", "srt", "vtt"):
        assert got[fmt] == _server_transcript(url, wav, fmt).decode(), fmt
    name = driver.find_element(By.ID, "dl-srt").get_attribute("download")
    assert name == wav.stem + ".srt"


def test_chosen_file_is_transcribed_with_downloads(page, mic_wav):
    driver, url = page
    driver.find_element(By.ID, "file").send_keys(str(mic_wav[0]))
    _check_file_result(driver, url, mic_wav[0])
    _assert_hears_the_words(_texts(driver, "file-text"), mic_wav[1])


def test_dropped_file_is_transcribed(page, mic_wav, tmp_path):
    driver, url = page
    driver.execute_script('document.getElementById("downloads").hidden = true;')
    script = """const [b64, name] = arguments;
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], name, {type: "audio/wav"}));
    document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));"""
    driver.execute_script(script, base64.b64encode(mic_wav[0].read_bytes()).decode(), mic_wav[0].name)
    _check_file_result(driver, url, mic_wav[0])
    _screenshot(driver, tmp_path)  # the page after both: microphone text above, file text below
