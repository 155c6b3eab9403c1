"""Data: synthetic AU faces, face alignment, tfds builders and the input pipeline."""
