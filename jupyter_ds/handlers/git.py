"""``jupyter-ds/v1/git/<verb>``: thin handlers over :class:`~jupyter_ds.git.GitService`.

The verb is the last segment of the route; GET verbs read (action ``read``), POST verbs
write (action ``write``), both on the resource ``jupyter_ds:git``. GET fields come from
the query string, POST fields from the JSON body; the service does the rest.
"""

from __future__ import annotations

from tornado import web

from jupyter_ds.errors import bad_request
from jupyter_ds.git.requests import READ_VERBS, WRITE_VERBS, parse_git, query_body
from jupyter_ds.handlers.base import DsApiHandler, authorized


class GitHandler(DsApiHandler):
    auth_resource = "jupyter_ds:git"

    @property
    def verb(self) -> str:
        return self.request.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def endpoint(self) -> str:  # type: ignore[override]
        """The route's name, ``git/<verb>`` (one handler class serves many verbs)."""
        return f"git/{self.verb}"

    async def answer(self, write: bool) -> None:
        verb = self.verb
        cls = (WRITE_VERBS if write else READ_VERBS)[verb]
        if write:
            body = self.body()
        else:
            args = {k: self._argument(k) for k in self.request.arguments}
            body = query_body(cls, args)
        req = parse_git(cls, body, self.ds.limits)
        # A commit in a repository without user.name is authored by the caller.
        user = self.call.user_name if verb == "commit" else None
        self.ok(await self.ds.git.call(verb, req, write=write, user=user))

    def _argument(self, name: str) -> str:
        """A query-string value; one that is not UTF-8 is a 400 naming its field."""
        try:
            return self.get_argument(name, strip=False)
        except web.HTTPError as exc:
            if exc.status_code != 400:
                raise
            raise bad_request(f"field '{name}' is not valid UTF-8", name) from None


class GitReadHandler(GitHandler):
    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        await self.answer(write=False)


class GitWriteHandler(GitHandler):
    @web.authenticated
    @authorized("write")
    async def post(self) -> None:
        await self.answer(write=True)


class GitConfigHandler(GitHandler):
    """``git/config``: GET reads the whitelisted keys, POST sets one of them."""

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        await self.answer(write=False)

    @web.authenticated
    @authorized("write")
    async def post(self) -> None:
        await self.answer(write=True)


GIT_ROUTES: list[tuple[str, type]] = [
    *((f"git/{verb}", GitReadHandler) for verb in READ_VERBS if verb != "config"),
    *((f"git/{verb}", GitWriteHandler) for verb in WRITE_VERBS if verb != "config"),
    ("git/config", GitConfigHandler),
]
