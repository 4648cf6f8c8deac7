"""``jupyter-ds/v1/adapters`` (list) and ``jupyter-ds/v1/adapters/<name>`` (admin load and
unload), and ``jupyter-ds/v1/finetune`` (admin job: start, state, cancel)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ds_engine.adapters import AdapterError
from tornado import web

from jupyter_ds.completion.service import ensure_ready
from jupyter_ds.errors import ApiError, adapter_error
from jupyter_ds.finetune.requests import AdapterLoadRequest, FinetuneRequest
from jupyter_ds.handlers.base import DsApiHandler, authorized
from jupyter_ds.paths import resolve_under_root
from jupyter_ds.requests import ADAPTER_NAME


class AdaptersHandler(DsApiHandler):
    """The adapters a completion request may name, and the folder defaults."""

    auth_resource = "jupyter_ds:completion"
    endpoint = "adapters"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        ensure_ready(self.ds.engine)
        self.ok({
            "adapters": self.ds.engine.adapters(),
            "folder_defaults": dict(self.ds.completion.settings.folder_adapters),
        })


class AdapterHandler(DsApiHandler):
    """``POST`` attaches the adapter folder ``path`` (relative to the server root; absent:
    the adapters directory's folder of that name) as ``name``; ``DELETE`` detaches it."""

    auth_resource = "jupyter_ds:admin"
    endpoint = "adapters/name"

    def _folder(self, name: str) -> Path:
        body = self.body() if self.raw_body().strip() else {}
        if body.get("path") in (None, ""):
            return Path(self.ds.finetune.adapters_dir) / name
        req = self.parse(AdapterLoadRequest)
        return resolve_under_root(self.ds.finetune.root_dir, req.path, "path")

    @web.authenticated
    @authorized("write")
    async def post(self, name: str) -> None:
        ensure_ready(self.ds.engine)
        folder = self._folder(name)
        if not folder.exists():
            raise ApiError(404, "not_found", f"no adapter folder {folder.name!r}", field="path")
        loop = asyncio.get_running_loop()
        try:
            # Reading and checking the weights is file work: off the event loop.
            info = await loop.run_in_executor(None, self.ds.engine.load_adapter, name,
                                              str(folder))
        except AdapterError as exc:
            raise adapter_error(exc) from None
        self.ok({"adapter": info})

    @web.authenticated
    @authorized("write")
    async def delete(self, name: str) -> None:
        ensure_ready(self.ds.engine)
        try:
            self.ok(self.ds.engine.unload_adapter(name))
        except AdapterError as exc:
            raise adapter_error(exc) from None


class FinetuneHandler(DsApiHandler):
    """The server's one fine-tuning job (see :mod:`jupyter_ds.finetune.job`)."""

    auth_resource = "jupyter_ds:admin"
    endpoint = "finetune"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        req = self.parse(FinetuneRequest)
        self.set_status(202)
        self.ok({"job": await self.ds.finetune.start(req)})

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        self.ok({"job": self.ds.finetune.status()})

    @web.authenticated
    @authorized("execute")
    async def delete(self) -> None:
        self.ok({"job": await self.ds.finetune.cancel()})


ADAPTER_ROUTES = [
    ("adapters", AdaptersHandler),
    (f"adapters/({ADAPTER_NAME})", AdapterHandler),
    ("finetune", FinetuneHandler),
]
