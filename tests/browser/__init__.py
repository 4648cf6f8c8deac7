"""Browser tests: a real JupyterLab with jupyter-ds, driven by headless Chromium.

A package so that its fixtures (one ``jupyter lab``, one Chromium) live for these tests
only and are stopped before the rest of the suite runs.
"""
