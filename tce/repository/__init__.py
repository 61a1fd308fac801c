"""The repository builder: a bundle becomes a Triton model repository (`tce build`)."""
