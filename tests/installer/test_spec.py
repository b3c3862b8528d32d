"""installer/dopamine.spec: it parses, and its exclusions never remove what the app imports."""

import ast
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "installer" / "dopamine.spec"
# pyqtgraph's plot curves import these at run time (pyqtgraph/Qt/OpenGLHelpers.py).
QT_NEEDED_BY_PYQTGRAPH = {"QtCore", "QtGui", "QtWidgets", "QtOpenGL", "QtOpenGLWidgets"}


def spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"), filename=str(SPEC))


def spec_constant(name: str):
    for node in spec_tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned a literal in {SPEC}")


def imported_modules(*folders: str) -> set[str]:
    """Every module named by an import statement in the app's own code (lazy imports included)."""
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_trimmed(dest: str) -> bool:
    """The spec's rule: a TRIMMED_FILES pattern matches and no KEPT_FILES pattern does."""
    return (any(fnmatch(dest, pattern) for pattern in spec_constant("TRIMMED_FILES"))
            and not any(fnmatch(dest, pattern) for pattern in spec_constant("KEPT_FILES")))


def test_spec_compiles_as_python():
    compile(SPEC.read_text(encoding="utf-8"), str(SPEC), "exec")


def test_spec_builds_one_folder_named_dopamine_with_resources():
    source = SPEC.read_text(encoding="utf-8")
    assert spec_constant("NAME") == "Dopamine"
    assert "COLLECT(" in source and "BUNDLE(" in source
    calls = {node.func.id: node for node in ast.walk(spec_tree())
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    datas = next(k.value for k in calls["Analysis"].keywords if k.arg == "datas")
    # gui.resources.resources_dir() looks in sys._MEIPASS/resources.
    assert ast.unparse(datas) == "[(str(ROOT / 'resources'), 'resources')] + DICOM_METADATA"
    exe = {k.arg for k in calls["EXE"].keywords}
    assert {"exclude_binaries", "console", "name"} <= exe  # one-folder: binaries go to COLLECT


def test_excluded_modules_are_not_imported_by_the_app():
    excluded = set(spec_constant("EXCLUDED_MODULES"))
    used = imported_modules("core", "gui")
    clashes = {name for name in used if any(name == ex or name.startswith(ex + ".") for ex in excluded)}
    assert not clashes


def test_excluded_qt_modules_are_not_used():
    excluded = set(spec_constant("EXCLUDED_QT"))
    used = {name.split(".")[1] for name in imported_modules("core", "gui")
            if name.startswith("PySide6.Qt")}
    assert "QtWidgets" in used  # the scan sees the GUI's imports
    assert not (used | QT_NEEDED_BY_PYQTGRAPH) & excluded


@pytest.mark.parametrize("kept", [
    "torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch/lib/libtorch_python.so", "torch/lib/libgomp.so.1",
    "torch/_C.cpython-311-x86_64-linux-gnu.so", "torch/nn/modules/conv.py", "torch/lib/libshm.so",
    "PySide6/Qt/plugins/platforms/libqoffscreen.so", "PySide6/Qt/plugins/platforms/libqxcb.so",
    "PySide6/Qt/plugins/imageformats/libqsvg.so", "PySide6/Qt/plugins/iconengines/libqsvgicon.so",
    "PySide6/Qt/lib/libQt6Svg.so.6", "PySide6/Qt/lib/libQt6OpenGL.so.6", "PySide6/Qt/lib/libQt6XcbQpa.so.6",
    "resources/icons/app.svg", "resources/styles/base.qss", "opacus/accountants/rdp.py",
    "torch/bin/torch_shm_manager",  # `import torch` raises without it
])
def test_trimming_keeps_what_the_app_loads(kept):
    assert not is_trimmed(kept)


@pytest.mark.parametrize("dropped", [
    "torch/bin/test_api", "torch/bin/protoc", "torch/test/Dict_test", "torch/lib/libtorchbind_test.so", "torch/include/ATen/ATen.h",
    "PySide6/Qt/qml/QtQuick/qmldir", "PySide6/Qt/translations/qtbase_de.qm", "PySide6/Qt/lib/libQt6Quick.so.6",
])
def test_trimming_drops_test_programs_headers_and_qml(dropped):
    assert is_trimmed(dropped)


def test_version_comes_from_the_package():
    source = SPEC.read_text(encoding="utf-8")
    assert "VERSION = core.__version__" in source
    assert "version=VERSION" in source and '"CFBundleShortVersionString": VERSION' in source


def test_every_dicom_decoder_plugin_the_app_depends_on_is_bundled():
    """Each decoder plugin in pyproject's dependencies is a hidden import with its metadata in the bundle
    (pylibjpeg finds plugins by their entry points; pydicom checks their versions)."""
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    wanted = {d.split("==")[0] for d in dependencies if d.startswith(("pylibjpeg", "pyjpegls"))}
    assert wanted == {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls"}
    assert wanted <= set(spec_constant("DICOM_PLUGIN_DISTRIBUTIONS"))
    modules = {"pylibjpeg": "pylibjpeg", "pylibjpeg-libjpeg": "libjpeg", "pylibjpeg-openjpeg": "openjpeg",
               "pylibjpeg-rle": "rle", "pyjpegls": "jpeg_ls"}
    assert {modules[name] for name in wanted} <= set(spec_constant("DICOM_PLUGIN_PACKAGES"))
    from importlib import metadata

    for distribution in wanted:  # installed, with the metadata copy_metadata bundles
        assert metadata.version(distribution)


def test_the_bundle_carries_the_x11_libraries_qt_needs_and_pyinstaller_would_collect():
    """What a plain desktop lacks for Qt's X11 plug-in is in the bundle: each is a dependency of the plug-in,
    PyInstaller does not exclude it, and the spec does not trim it (the build fails if one is missing)."""
    import subprocess

    from PyInstaller.depend.dylib import include_library

    from launcher.platform_check import plugin_folder

    carried = spec_constant("BUNDLED_X11_LIBS")
    needed = subprocess.run(["ldd", str(plugin_folder() / "libqxcb.so")], capture_output=True, text=True).stdout
    assert {"libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb-cursor.so.0"} <= set(carried)
    for name in carried:
        assert f"{name} =>" in needed, f"{name} is not a dependency of Qt's xcb plug-in"
        assert include_library(name), f"PyInstaller would not collect {name}"
        assert not is_trimmed(name)
