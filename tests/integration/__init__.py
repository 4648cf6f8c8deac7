"""Integration tests against third-party model servers (``make test-integration``)."""
