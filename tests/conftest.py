"""Shared test set-up: offscreen Qt, few threads, user folders under tmp."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# What `make test-fast` leaves out: tests that start processes, servers or windows.
SLOW_FOLDERS = ("e2e", "gui", "installer", "security")
SLOW_FILES = ("test_coordinator_lies_over_https.py", "test_one_ledger.py", "test_benchmark", "_benchmark.py",
              "test_ledger_and_audit.py", "test_cli")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.parts
        folder = parts[parts.index("tests") + 1] if "tests" in parts else ""
        if folder in SLOW_FOLDERS or any(name in item.path.name for name in SLOW_FILES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Point every platformdirs location at a temporary folder, so tests never touch the real ones."""
    home = tmp_path_factory.mktemp("userhome")
    monkeypatch.setenv("DOPAMINE_HOME", str(home))
    yield


def _write_mono_dicom(path, pixels, **fields) -> None:
    """An 8-bit MONOCHROME2 DICOM file holding ``pixels``, with extra header ``fields``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    for key, value in fields.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="session")
def write_mono_dicom():
    """Write an 8-bit single-frame monochrome DICOM file with extra header ``fields`` (inference and viewer tests)."""
    return _write_mono_dicom


@contextmanager
def run_https_server(app, certfile, keyfile, port: int | None = None):
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
                            log_level="warning", lifespan="on", http="h11", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def https_server():
    """``with https_server(app, certfile, keyfile) as url:`` serves ``app`` over TLS in a thread."""
    return run_https_server
