"""GenEval scoring on transformers alone: Mask2Former instances, CLIP colours, and GenEval's rules.

rules.py (pure: metadata + detections -> verdict), detector.py (Mask2Former, mmdet-2 preprocessing and instance
post-processing), colors.py (CLIP zero-shot colour), scorer.py (a GenEval folder -> results), convert.py (the
official mmdet checkpoint -> a transformers model directory). Heavy imports (torch, transformers) stay inside
detector.py, colors.py and convert.py.
"""
