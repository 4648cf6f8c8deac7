"""``jupyter-ds lsp``: the language server that brings jupyter-ds to every editor.

A set of small pygls features (:mod:`jupyter_ds.lsp.server`) over one backend
(:mod:`jupyter_ds.lsp.backends`): a running jupyter-ds server over HTTP (client mode, the
default: every call goes through its one request pipeline, with its auth, roles, limits,
metrics and audit), or the same services in-process (``--local``). What the editor holds
(documents, notebooks, positions in UTF-16) becomes API request bodies in
:mod:`jupyter_ds.lsp.documents`; :mod:`jupyter_ds.lsp.protocol` answers JSON-RPC that
pygls alone would drop (malformed messages, requests before ``initialize``).
"""
