"""One run: its parameters, its folder layout, its manifest, the shared stage context, notebook helpers and plots."""
