"""Selection math for the data-sampling methods: COLT's online OOD picks (`colt`), MAK's offline open-world
sampling (`mak`), the K-center greedy it uses (`kcenter`) and the shared k-means (`kmeans`). Pure functions on
arrays: NumPy or torch tensors, running on the tensors' device.
"""
