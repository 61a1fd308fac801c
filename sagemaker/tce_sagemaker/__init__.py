"""Seed 003's SageMaker PyTorch handler: the calibrated ensemble in process (`model_fn`,
`input_fn`, `predict_fn`, `output_fn`). Shipped in the archive of `tce package-sagemaker
--handler pytorch` with tce_backends and tce_client; kept apart so that the server-side
package imports nothing of the client."""
