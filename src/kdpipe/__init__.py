"""Knowledge distillation on CIFAR-10 as a reproducible DVC + MLflow pipeline."""
