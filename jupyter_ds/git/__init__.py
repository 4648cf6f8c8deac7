"""Git operations on repositories under the server root (issue 5).

``service.GitService`` is the one core class; ``runner`` confines paths and runs git,
``validate`` checks refs and config keys, ``parse`` reads git's porcelain output,
``nbdiff`` diffs notebooks by cell source, ``message`` drafts commit messages.
"""

from jupyter_ds.git.service import GitService, GitSettings

__all__ = ["GitService", "GitSettings"]
