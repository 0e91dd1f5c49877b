"""Data: long-tailed splits and their file formats, base image collections, training and probe data sets."""
