"""Benchmark and record files: data files, benchmark loaders (expected outputs computed in the sandbox), mutants, JSONL, crash-safe logs, typed records."""
