"""Data side of the recipe: Kaldi data dirs, corpora, features and scoring."""
