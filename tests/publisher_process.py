"""A worker process for the tests: plain synchronous code, as a Celery task is, publishing
with ``kanal.publisher.Publisher(CONFIG).sync``.

``python -m tests.publisher_process CONFIG.toml`` reads one JSON command per line on stdin,
``[method, args, kwargs]``, calls ``publisher.sync.<method>(*args, **kwargs)`` and writes one
JSON line: ``{"ok": answer}``, or ``{"error": status, "message": text}`` for an ApiError.
``["fork", [], {}]`` makes the next command run in a forked child, as in a Celery prefork
pool whose parent built (and here also used) the publisher; the answer is the child's.
End of input closes the publisher.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from kanal.protocol.errors import ApiError
from kanal.publisher import Publisher

__all__ = ["main"]


def _answer(publisher: Publisher, command: list[Any]) -> dict[str, Any]:
    method, args, kwargs = command
    try:
        result = getattr(publisher.sync, method)(*args, **kwargs)
    except ApiError as error:
        return {"error": error.status, "message": error.message}
    return {"ok": result}


def _in_child(publisher: Publisher, command: list[Any]) -> None:
    pid = os.fork()
    if pid == 0:  # the child answers, then leaves without running the parent's cleanup
        code = 1
        try:
            print(json.dumps(_answer(publisher, command)), flush=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print(json.dumps({"error": "child failed"}), flush=True)


def main() -> None:
    publisher = Publisher(sys.argv[1])
    fork_next = False
    for line in sys.stdin:
        command = json.loads(line)
        if command[0] == "fork":
            fork_next = True
            print(json.dumps({"ok": None}), flush=True)
        elif fork_next:
            fork_next = False
            _in_child(publisher, command)
        else:
            print(json.dumps(_answer(publisher, command)), flush=True)
    publisher.sync.close()


if __name__ == "__main__":
    main()
