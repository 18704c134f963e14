"""The ``cameras`` and ``import-camera`` commands: cameras on a USB cable (PTP/MTP)."""

from __future__ import annotations

import argparse
from typing import Any

from imalinkd.errors import UsageError


def add_commands(add, js: argparse.ArgumentParser) -> None:
    add("cameras", "list the cameras and phones on USB that libgphoto2 sees (and the [cameras] ports that answer)", js)
    c = add("import-camera", "import a camera or phone on a USB cable (PTP/MTP) as one new session", js)
    c.add_argument("--camera", metavar="MODEL", help="the camera's model as 'imalinkd cameras' lists it (default: the only one)")
    c.add_argument("--port", help="its port (usb:001,014; disk:/DIR for libgphoto2's Directory Browse)")
    c.add_argument("--description", "-d", help="session description (default: [cameras] description, the model)")
    c.add_argument("--storage", metavar="ROOT", help="storage root to import into (default: [storage] root)")


def cmd_cameras(config, args) -> int:
    from imalinkd.camera_import import detect_cameras
    from imalinkd.cli import _print_json, _say

    cams = detect_cameras(config)
    if args.json:
        _print_json([{"model": c.model, "port": c.port} for c in cams])
    else:
        for c in cams:
            _say(f"{c.model:<32} {c.port}")
        if not cams:
            _say("no camera found")
    return 0


def choose_camera(config, model: str | None, port: str | None):
    from imalinkd.camera import Camera
    from imalinkd.camera_import import detect_cameras

    if model and port:
        return Camera(model, port)
    cams = [c for c in detect_cameras(config) if (not model or c.model == model) and (not port or c.port == port)]
    if len(cams) != 1:
        what = "no camera found" if not cams else f"{len(cams)} cameras found ({', '.join(f'{c.model} at {c.port}' for c in cams)})"
        raise UsageError(f"{what}; connect one camera, or name it with --camera MODEL --port PORT ('imalinkd cameras' lists them)")
    return cams[0]


def cmd_import_camera(config, args: argparse.Namespace) -> int:
    from imalinkd.camera_import import import_camera
    from imalinkd.cli import _ProgressBar, _cancel_on_signals, _import_result_out

    camera = choose_camera(config, args.camera, args.port)
    with _ProgressBar(not args.json) as bar:
        result = import_camera(config, camera, description=args.description, storage_root=args.storage, progress=bar.update,
                               cancel=_cancel_on_signals())
    return _import_result_out(result, args.json)


COMMANDS: dict[str, Any] = {"cameras": cmd_cameras, "import-camera": cmd_import_camera}
