"""Judging records against the rules: the engine (a composition of judges over one
state, tracer/judge/engine.py) and the reports."""
