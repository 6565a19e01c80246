"""Speed and quality measurements that print tables. Run one from the repo root as `python -m benchmarks.NAME`
(`--help` lists its options); what they share lives in gvu/ (gvu.measure, gvu.nano_eval, gvu.reward_reference,
gvu.models.stage_timing)."""
