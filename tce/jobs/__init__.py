"""Jobs that orchestrate: batch prediction and evaluation, calibration (fit, apply, report,
publish), benchmark, capacity, the demo, the load test and the SageMaker archive. Commands
call them; they call the layers below."""
