"""`lipsync serve`: one engine process that answers many requests, one JSON object per line on stdin.

Owns: reading requests (in a thread, so that a cancel line acts while a request runs), answering
them one after another, tagging every reply message with the request's id, the loaded models
(inference.predictor.PredictorCache), and cancelling one request (a {"cancel": ID} line, or
SIGINT: the running request) without ending the server. A request is a command line of the CLI:
cli.py passes in its own parser and runner, so options, checks and one-line errors are the
CLI's (this module must not import cli.py). docs/predict.md, "lipsync serve".

Requests (stdin, one per line):
    {"id": "7", "command": "predict", "args": ["MODEL", "line.wav", "-o", "OUT", "--no-preview"]}
    {"cancel": "7"}                       the request with that id stops (running or waiting)
    {"command": "quit"}                   or the end of stdin: answer what was received, then exit
Replies (stdout): the messages of `lipsync --json COMMAND ARGS`, each payload with "id": "7",
ending with ["DONE", {"exit_code": ..., "protocol": 1, "id": "7"}]. The server's own messages
carry no id: ["STATUS", {"message": ..., "ready": true, ...}] first, ["DONE", {...}] last.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable, TextIO, Union

from .core import protocol
from .core.errors import UsageError
from .core.progress import CancelToken
from .core.protocol import EXIT_CANCELLED, EXIT_OK, EXIT_USAGE
from .core.version import __version__

SERVED = ("predict", "info")       # the commands a request may name (besides quit)
CANCELLED = "cancelled; finished work is kept and a re-run resumes from it"
RequestId = Union[str, int]


@dataclass(frozen=True)
class Request:
    """One line of stdin that is not a cancel line."""

    id: RequestId | None            # echoed in every reply message (None: the line had no usable id)
    command: str                    # one of SERVED, or "quit"
    args: tuple[str, ...] = ()      # the command's arguments, as on the command line after COMMAND
    problem: str = ""               # why this is not a valid request ("" when it is): ERROR + DONE, exit code 2


@dataclass(frozen=True)
class Cancel:
    id: RequestId                   # the request to stop


def read_request(line: str) -> Request | Cancel:
    """One stdin line -> a Request (its `problem` set when the line is not a valid one) or a Cancel.

    >>> read_request('{"id": 3, "command": "predict", "args": ["m", "a.wav"]}')
    Request(id=3, command='predict', args=('m', 'a.wav'), problem='')
    >>> read_request('{"cancel": 3}')
    Cancel(id=3)
    >>> read_request('{"id": 4, "command": "train"}').problem
    "serve: unknown command 'train' (a request runs one of predict, info, or quit)"
    """
    try:
        data = json.loads(line)
    except ValueError as e:
        return Request(None, "", problem=f"serve: a request is one JSON object per line ({e}): {line[:80]!r}")
    if not isinstance(data, dict):
        return Request(None, "", problem=f"serve: a request is a JSON object, got {line[:80]!r}")
    if "cancel" in data:
        return Cancel(data["cancel"]) if _valid_id(data["cancel"]) else \
            Request(None, "", problem=f"serve: cancel needs a request id (a string or an integer), got "
                                      f"{data['cancel']!r}")
    rid, command, args = data.get("id"), data.get("command"), data.get("args", [])
    if command == "quit":
        return Request(rid if _valid_id(rid) else None, "quit")
    if not _valid_id(rid):
        return Request(None, str(command or ""), problem='serve: a request needs an "id" (a string or an integer)')
    if command not in SERVED:
        return Request(rid, str(command), problem=f"serve: unknown command {command!r} (a request runs one of "
                                                  f"{', '.join(SERVED)}, or quit)")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return Request(rid, command, problem='serve: "args" must be a list of strings (the command line after '
                                             'the command)')
    return Request(rid, command, tuple(args))


def _valid_id(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


_END = object()        # stdin ended


@dataclass
class Server:
    """Answers requests one at a time (module docstring); cli.py supplies its parser and runner.

    parse : argv -> argparse.Namespace, raising UsageError (cli.build_parser(_RequestParser).parse_args).
    run : (namespace, reporter, cancel) -> exit code, every error one line (cli.run_command).
    reporter_for : {"id": ...} -> a --json Reporter whose messages carry those keys.
    """

    parse: Callable
    run: Callable
    reporter_for: Callable
    predictors: object = None                       # the PredictorCache, made when serving starts
    _inbox: queue.Queue = field(default_factory=queue.Queue)
    _waiting: dict = field(default_factory=dict)    # id -> CancelToken of requests received, not answered
    _current: RequestId | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the reader thread

    def read(self, stream: TextIO) -> None:
        """Queue every request line of `stream`; act on cancel lines at once; stop after quit or EOF."""
        try:
            for line in stream:
                if not line.strip():
                    continue
                item = read_request(line)
                if isinstance(item, Cancel):
                    self.cancel(item.id)
                    continue
                if not item.problem and item.command != "quit":
                    with self._lock:
                        if item.id in self._waiting:
                            item = Request(item.id, item.command, item.args,
                                           f"serve: a request with id {item.id!r} is already waiting or running")
                        else:
                            self._waiting[item.id] = CancelToken()
                self._inbox.put(item)
                if item.command == "quit":
                    return
        finally:
            self._inbox.put(_END)

    def cancel(self, rid: RequestId) -> bool:
        """Stop request `rid` (running: at its next check; waiting: answered as cancelled). False if
        no such request is waiting or running (e.g. it has just finished)."""
        with self._lock:
            token = self._waiting.get(rid)
        if token is not None:
            token.set()
        return token is not None

    def cancel_current(self, *_signal) -> None:
        """SIGINT: stop the running request only."""
        if self._current is not None:
            self.cancel(self._current)

    # -- the main thread

    def serve(self, stream: TextIO) -> int:
        """Answer the requests of `stream` until quit or its end; returns the server's exit code."""
        threading.Thread(target=self.read, args=(stream,), name="lipsync-serve-stdin", daemon=True).start()
        protocol.emit("STATUS", {"message": f"lipsync {__version__} serving: one JSON request per line on stdin",
                                 "ready": True, "pid": os.getpid(), "commands": list(SERVED)})
        from .inference.folder import predict_to_folder  # noqa: F401  (warm: requests meanwhile wait in the inbox)
        from .inference.predictor import PredictorCache

        self.predictors = PredictorCache()
        while (item := self._inbox.get()) is not _END:
            if item.command == "quit":
                if item.id is not None:
                    protocol.emit("DONE", {"exit_code": EXIT_OK, "protocol": protocol.PROTOCOL_VERSION, "id": item.id})
                break
            self.answer(item)
        return EXIT_OK

    def answer(self, request: Request) -> int:
        """Run one request and send its messages, DONE last; returns its exit code."""
        reporter = self.reporter_for({"id": request.id})
        with self._lock:
            token = self._waiting.get(request.id) if not request.problem else None
        self._current = request.id if token is not None else None
        try:
            code = self._run(request, reporter, token)
        finally:
            self._current = None
            if token is not None:
                with self._lock:
                    self._waiting.pop(request.id, None)
        protocol.emit("DONE", {"exit_code": code, "protocol": protocol.PROTOCOL_VERSION, "id": request.id})
        return code

    def _run(self, request: Request, reporter, token: CancelToken | None) -> int:
        if request.problem or token is None:
            reporter.info("ERROR", request.problem or "serve: not a request")
            return EXIT_USAGE
        if token.is_set:
            reporter.info("ERROR", CANCELLED)
            return EXIT_CANCELLED
        try:
            args = self.parse([request.command, *request.args])
        except UsageError as e:
            reporter.info("ERROR", str(e))
            return EXIT_USAGE
        args.json = True
        if hasattr(args, "predictors"):
            args.predictors = self.predictors
        return self.run(args, reporter, token)


def serve(stream: TextIO, parse: Callable, run: Callable, reporter_for: Callable) -> int:
    """`lipsync serve` (cli.py): answer the requests on `stream`; SIGINT cancels the running request
    only (the handler before is restored at the end). Returns the server's exit code."""
    server = Server(parse, run, reporter_for)
    before = signal.signal(signal.SIGINT, server.cancel_current)
    try:
        return server.serve(stream)
    finally:
        signal.signal(signal.SIGINT, before)
