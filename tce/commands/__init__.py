"""The ``tce`` commands, one module each: ``add(commands)`` declares the command's options
(each with its help and default shown) and the function that runs it. A command parses and
prints; the work is done by ``tce.jobs`` and the layers below. Heavy imports stay inside the
run functions, so ``tce --help`` is instant."""
from __future__ import annotations

from tce.commands import (
    benchmark,
    build,
    calibrate,
    capacity,
    demo,
    demo_bundle,
    demo_data,
    evaluate,
    import_seed,
    loadtest,
    package_sagemaker,
    predict,
    release,
    schema,
    serve,
    trace,
)

# In the order `tce --help` lists them.
MODULES = (demo_bundle, demo_data, build, serve, release, import_seed, package_sagemaker, calibrate, predict, evaluate,
           schema, loadtest, demo, benchmark, capacity, trace)
