"""Judging records against the rules: the engine (its state, the callback and step judges, findings) and reports."""
