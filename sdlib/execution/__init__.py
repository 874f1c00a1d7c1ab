"""Running untrusted programs: problems and their tests, the value codec, the sandbox and its layers, verdicts, metrics. Imports nothing else of sdlib."""
