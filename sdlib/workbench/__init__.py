"""The commands: sdlib run (papermill runner), sdlib evaluate, the CLI."""
