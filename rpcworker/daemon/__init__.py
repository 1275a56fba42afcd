"""The service around the engine: processes, signals, systemd, the HTTP endpoints.

===============  ==================================================================
``service``      build the worker and run it (``workers = 1``); validate before forking
``supervisor``   ``workers > 1``: cotyledon's supervisor and worker processes; their
                 systemd notifications summed up
``systemd``      sd_notify (READY, STATUS, WATCHDOG, STOPPING, RELOADING); never raises
``instruments``  the Prometheus instruments, a ``Recorder`` of the engine
``endpoints``    ``/metrics``, ``/healthz``, ``/readyz``; multiprocess metrics
``lotdepth``     ``rpcworker_parked_messages``: the parking lots' depths
===============  ==================================================================
"""
