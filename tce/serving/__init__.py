"""Serving: the embedded Triton server and its supervisor (restarts, replicas behind the
gateway), the admin key and the processes it starts."""
