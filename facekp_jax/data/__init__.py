"""Faces from files or the generator, split and augmented: readers, dataset, sampler, on-device."""
