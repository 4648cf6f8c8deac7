"""jupyter_ds: the routing tier of jupyter-ds, a Jupyter server extension."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    from jupyter_ds.app import JupyterDsApp

    return [{"module": "jupyter_ds.app", "app": JupyterDsApp}]


def _jupyter_labextension_paths() -> list[dict]:
    """The prebuilt JupyterLab extension (built from labextension/ by ``make setup``)."""
    return [{"src": "labextension", "dest": "jupyter-ds"}]
