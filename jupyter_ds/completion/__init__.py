"""Inline code completion: context fitting, post-processing rules and syntax validation."""
