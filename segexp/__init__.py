"""segexp: medical image segmentation experiments with Hydra, Keras 3, albumentations and MLflow."""

import os

# Quieten TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
