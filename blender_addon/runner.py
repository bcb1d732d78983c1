"""Engine jobs inside Blender: the modal-operator base every long engine step uses.

Owns: turning the add-on's preferences into an EngineSpec, the add-on's folders (workspace,
logs), the one job that may run at a time (with its status for the panel), and
EngineJobOperator: validate -> start jobs -> poll on a 0.1 s timer (status bar text with
stage, percent and ETA; Esc or the panel's Cancel button asks the engine to stop) -> apply
the results, with one cleanup path whatever the outcome. In background mode (no window,
as in tests and `blender -b`) the same steps run blocking, and Ctrl-C cancels.
Also owns the warm engine server (engine_server): predictions go to one `lipsync serve` that stays
up while Blender runs, and stop_all shuts it down.
Must not: read the engine's output files (results.py does) or parse its stdout (client.py).

Other modules (dub.py, cartoon.py) subclass EngineJobOperator:

    class LIPSYNC3D_OT_dub(EngineJobOperator, bpy.types.Operator):
        bl_idname, bl_label = "lipsync3d.dub", "Dub"
        def build_jobs(self, context):
            spec = engine_spec(context)
            return [spec.job("Dub", "dub", model, "--audio", audio, "--video", video, "-o", out)]
        def on_success(self, context, outcome):      # outcome.results: RESULT payloads
            ...; return {'FINISHED'}
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import bpy

from .core import client, server

TIMER_S = 0.1                      # modal poll interval
PACKAGE = __package__              # "bl_ext.<repo>.lipsync3d" (extension) or "lipsync3d" (legacy add-on)


class UserError(Exception):
    """A problem the user can fix (a missing input, an unset preference); shown as one line."""


# ---------------------------------------------------------------------------------------------
# Preferences, folders, the engine
# ---------------------------------------------------------------------------------------------

def preferences(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(PACKAGE)
    return addon.preferences if addon else None


def user_dir() -> Path:
    """The add-on's own writable folder (kept across upgrades): engine venv, default workspace."""
    if PACKAGE.startswith("bl_ext.") and hasattr(bpy.utils, "extension_path_user"):
        return Path(bpy.utils.extension_path_user(PACKAGE, create=True))
    return Path(bpy.utils.user_resource('DATAFILES', path="lipsync3d", create=True))


def workspace(context) -> Path:
    """Where speakers, models, predictions and logs go: the scene's setting, else a "lipsync3d" folder
    next to the saved .blend, else user_dir()/workspace (an unsaved file)."""
    s = context.scene.lipsync3d.workspace
    if s.strip():
        root = Path(bpy.path.abspath(s))
    elif bpy.data.filepath:
        root = Path(bpy.path.abspath("//lipsync3d"))
    else:
        root = user_dir() / "workspace"
    root.mkdir(parents=True, exist_ok=True)
    return root


def blend_path(path) -> str:
    """A path as the .blend stores it: relative ("//...") when the file is saved, so a project folder
    can move to another machine; absolute otherwise."""
    path = str(path)
    if not bpy.data.filepath:
        return path
    try:
        return bpy.path.relpath(path)
    except ValueError:          # another drive (Windows)
        return path


def log_path(context, name: str) -> Path:
    return workspace(context) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}.log"


def engine_spec(context) -> client.EngineSpec:
    """The engine to run, from the preferences; UserError when there is none."""
    prefs = preferences(context)
    python = bpy.path.abspath(prefs.engine_python) if prefs and prefs.engine_python.strip() else \
        client.default_engine_python(user_dir=user_dir())
    if not python:
        raise UserError("no engine Python set: choose one in Preferences > Add-ons > LipSync3D, or create the "
                        "engine environment there")
    source = prefs.engine_source if prefs else 'BUNDLED'
    engine_dir = client.bundled_engine_dir() if source == 'BUNDLED' else None
    device = {'CPU': "cpu", 'GPU': "mps" if sys.platform == "darwin" else "cuda"}.get(
        prefs.device if prefs else 'AUTO', "auto")
    hang = float(prefs.hang_timeout_s) if prefs else 600.0
    return client.EngineSpec(python, str(engine_dir) if engine_dir else None, device, hang)


# ---------------------------------------------------------------------------------------------
# The warm engine: one `lipsync serve` kept running for predictions
# ---------------------------------------------------------------------------------------------

_SERVER: dict = {"server": None}


def engine_server(context, spec: client.EngineSpec) -> server.EngineServer:
    """The warm `lipsync serve` of this engine (server.py): made on first use (its process starts with
    the first job), made again when the process has ended or the engine settings changed (the
    old one is shut down). Jobs from server.job() load each model once for many predictions."""
    current = _SERVER["server"]
    if current is not None and current.started and (not current.alive or current.key != server.server_key(spec)):
        current.shutdown()
        current = None
    elif current is not None and current.key != server.server_key(spec):
        current = None                                  # never started: nothing to shut down
    if current is None:
        current = server.EngineServer(spec, log_path=log_path(context, "serve"))
        _SERVER["server"] = current
    return current


def warm_server():
    """The warm engine server if one is running (None otherwise)."""
    current = _SERVER["server"]
    return current if current is not None and current.alive else None


# ---------------------------------------------------------------------------------------------
# The running job (one at a time)
# ---------------------------------------------------------------------------------------------

_ACTIVE = {"chain": None, "cancel": False}


def active_chain():
    return _ACTIVE["chain"]


def busy() -> bool:
    """A job is running (operators that start one grey out)."""
    return _ACTIVE["chain"] is not None and not _ACTIVE["chain"].finished


def request_cancel() -> bool:
    """The panel's Cancel button: the running job's next tick asks the engine to stop."""
    if _ACTIVE["chain"] is None:
        return False
    _ACTIVE["cancel"] = True
    return True


def stop_all() -> None:
    """On unregister / quit: no engine outlives the add-on (the running job, the warm server)."""
    chain = _ACTIVE["chain"]
    if chain is not None and not chain.finished:
        chain.kill()
    _ACTIVE.update(chain=None, cancel=False)
    if _SERVER["server"] is not None:
        _SERVER["server"].shutdown()
        _SERVER["server"] = None


def _status(context):
    return getattr(context.window_manager, "lipsync3d_job", None)


def _redraw(context) -> None:
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type in {'VIEW_3D', 'SEQUENCE_EDITOR'}:
                area.tag_redraw()


class EngineJobOperator:
    """Mixin for operators that run the engine. Subclasses implement build_jobs and on_success."""

    _timer = None
    _chain = None
    _last_text = ""

    # -- to implement ----------------------------------------------------------------------
    def build_jobs(self, context) -> list:
        """Validate the inputs and return EngineJob objects (not started); raise UserError."""
        raise NotImplementedError

    def on_success(self, context, outcome: client.JobOutcome) -> set:
        return {'FINISHED'}

    # -- Blender entry points --------------------------------------------------------------
    def invoke(self, context, event):
        if not self._begin(context):
            return {'CANCELLED'}
        if self._chain is None or context.window is None or bpy.app.background:
            return self._run_blocking(context)
        self._timer = context.window_manager.event_timer_add(TIMER_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        context.window_manager.progress_begin(0, 100)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        if not self._begin(context):
            return {'CANCELLED'}
        return self._run_blocking(context)

    def modal(self, context, event):
        if event.type == 'ESC' and event.value == 'PRESS':
            self._chain.cancel()
            self._set_text(context, "Cancelling: the engine is keeping finished work...")
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        return self._tick(context)

    def cancel(self, context):
        """Blender is closing the operator (file load, quit): stop the engine too."""
        if self._chain is not None and not self._chain.finished:
            self._chain.kill()
        self._cleanup(context)

    # -- the steps -------------------------------------------------------------------------
    def _begin(self, context) -> bool:
        if _ACTIVE["chain"] is not None and not _ACTIVE["chain"].finished:
            self.report({'ERROR'}, "another LipSync3D job is running; cancel it or wait for it to finish")
            return False
        try:
            jobs = self.build_jobs(context)
        except (UserError, OSError, ValueError) as e:
            self._show_error(context, str(e))
            return False
        if not jobs:     # nothing to run (e.g. every result already there)
            self._chain = None
            return True
        self._chain = client.JobChain(jobs).start()
        _ACTIVE.update(chain=self._chain, cancel=False)
        status = _status(context)
        if status is not None:
            status.running, status.text, status.fraction, status.last_error = True, "starting...", 0.0, ""
        return True

    def _run_blocking(self, context):
        if self._chain is None:
            return self._finish(context, client.JobOutcome("ok", 0))
        last_print = 0.0
        while not self._chain.finished:
            try:
                self._tick_messages(context)
                if time.monotonic() - last_print > 2.0 and not self._chain.finished:
                    print(f"LipSync3D: {self._chain.status_text()}", flush=True)
                    last_print = time.monotonic()
                time.sleep(client.POLL_SLEEP_S)
            except KeyboardInterrupt:      # Ctrl-C in `blender -b`: let the engine stop cleanly
                self._chain.cancel()
        self._tick_messages(context)
        return self._finish(context, self._chain.outcome)

    def _tick(self, context):
        if _ACTIVE["cancel"] and not self._chain.finished:
            _ACTIVE["cancel"] = False
            self._chain.cancel()
        self._tick_messages(context)
        if not self._chain.finished:
            return {'RUNNING_MODAL'}
        return self._finish(context, self._chain.outcome)

    def _tick_messages(self, context) -> None:
        for m in self._chain.poll():
            if m.kind == "WARN":
                self.report({'WARNING'}, str(m.payload.get("message", "")))
            elif m.kind == "STATUS":
                self._set_text(context, f"{self._chain.current.label}: {m.payload.get('message', '')}")
        if not self._chain.finished and self._chain.current.progress.stage:
            self._set_text(context, self._chain.status_text(), self._chain.fraction)

    def _set_text(self, context, text: str, fraction: float | None = None) -> None:
        if text == self._last_text:
            return
        self._last_text = text
        status = _status(context)
        if status is not None:
            status.text = text
            if fraction is not None:
                status.fraction = fraction
        workspace_ = getattr(context, "workspace", None)
        if workspace_ is not None and context.window is not None:
            workspace_.status_text_set(f"LipSync3D  {text}  (Esc to cancel)")
            if fraction is not None:
                context.window_manager.progress_update(int(fraction * 100))
            _redraw(context)

    def _finish(self, context, outcome: client.JobOutcome) -> set:
        self._cleanup(context)
        for w in outcome.warnings:
            print(f"LipSync3D warning: {w}", file=sys.stderr)
        if outcome.cancelled:
            self.report({'WARNING'}, outcome.error or "cancelled")
            return {'CANCELLED'}
        if not outcome.ok:
            if outcome.stderr_tail:
                print(f"LipSync3D: the engine's last log lines ({outcome.log_path or 'stderr'}):\n"
                      f"{outcome.stderr_tail}", file=sys.stderr)
            self._show_error(context, outcome.error, outcome.log_path)
            return {'CANCELLED'}
        try:
            return self.on_success(context, outcome)
        except (UserError, OSError, ValueError) as e:
            self._show_error(context, str(e))
            return {'CANCELLED'}

    def _show_error(self, context, message: str, log: str = "") -> None:
        status = _status(context)
        if status is not None:
            status.last_error, status.last_log = message, log or ""
        self.report({'ERROR'}, message)

    def _cleanup(self, context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
            wm.progress_end()
        workspace_ = getattr(context, "workspace", None)
        if workspace_ is not None and context.window is not None:
            workspace_.status_text_set(None)
        if _ACTIVE["chain"] is self._chain:
            _ACTIVE.update(chain=None, cancel=False)
        status = _status(context)
        if status is not None:
            status.running, status.text, status.fraction = False, "", 0.0
        _redraw(context)
