"""``asr serve``: an HTTP and WebSocket recognition server with a browser page.

:mod:`asr.serve.sessions` holds the logic (messages, limits, streaming sessions over the long-file
transcriber) and :mod:`asr.serve.app` the thin ASGI layer (Starlette on uvicorn); ``static/`` is the
page, plain HTML and JavaScript with no build step.
"""

from asr.serve.sessions import ServeConfig

__all__ = ["ServeConfig"]
