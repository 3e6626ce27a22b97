"""Data layer: read CIFAR batches, image folders and manifests into one `ImageSet` type."""
