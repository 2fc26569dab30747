"""Notebooks: JupyterLab servers in sandboxes without network, behind one authenticating proxy.

``jupyter`` starts, reads, saves and stops one server (host side); ``proxy`` serves every
running notebook's HTTP and WebSocket traffic on one host port, for the owning team's key only.
"""

from services.provisioner.notebooks.jupyter import Activity, Notebook, reap, start_notebook
from services.provisioner.notebooks.proxy import NotebookProxy

__all__ = ["Activity", "Notebook", "NotebookProxy", "reap", "start_notebook"]
