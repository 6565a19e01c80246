"""Research experiments behind the docs' results. Run one from the repo root as `python -m experiments.NAME`
(`--help` lists its options); what they share lives in gvu/ (gvu.compare, gvu.nano_eval, gvu.measure)."""
