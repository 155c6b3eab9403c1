"""Synthetic AU faces ("synth_au"): procedurally rendered aligned 200x200 faces with 49 landmarks,
smooth AU intensity sequences with expression co-occurrences/exclusions, an optional one-sided
paralysis grade, subject-exclusive folds, and raw (unaligned) frames for alignment tests.
"""
from data_pipelines.alignment import interocular
from data_pipelines.synthetic.face import au_region_mask, to_raw
from data_pipelines.synthetic.generator import SIZES, SynthConfig, generate, num_frames, occurrence

__all__ = ["SIZES", "SynthConfig", "au_region_mask", "generate", "interocular", "num_frames", "occurrence",
           "to_raw"]
