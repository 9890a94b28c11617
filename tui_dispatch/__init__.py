"""tui-dispatch's dashboard and CLI: a Textual app that drives and watches the engine.

It imports only the engine's public API and reads engine state through immutable snapshots.
"""
