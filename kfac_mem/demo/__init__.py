"""The embedded default of `kfac-mem demo`: real text, memorized passages and canaries, synthetic
skills, a small OLMo-2 trained on them, and the end-to-end pipeline on top."""
