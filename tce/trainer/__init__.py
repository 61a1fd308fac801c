"""The demo trainer, on its own: the reference model architecture and the training that
writes the demo bundle (`tce demo-bundle`)."""
