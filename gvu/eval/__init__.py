"""Scorers for benchmark folders: GenEval on transformers (Mask2Former + CLIP), GenEval++ and DPG-Bench with judges.

A scorer never imports a model backend; both meet in the CLI.
"""
