"""Data: reading, the rgb_map codec, pairing, splits, sampling, the loader, augmentation, phantom,
NIfTI volumes, prepare, checks."""
