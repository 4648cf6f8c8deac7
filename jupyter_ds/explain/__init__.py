"""Explain: a markdown explanation of code through the model's chat template."""
