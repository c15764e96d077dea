"""Export of trained models into the Triton model repository."""
