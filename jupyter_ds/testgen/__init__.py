"""Test generation: candidate parsing and validation, sandboxed runs, insertion."""
