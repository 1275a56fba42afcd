"""One worker process's loop and the life of a delivery in it.

==================  ===============================================================
``worker``          the kombu ``ConsumerMixin``: kombu's template filled in,
                    reconnects, the stop, SIGHUP, recycling, questions for the loop
``session``         one connection's I/O: select() on the socket and the wake pipe
``subscriptions``   declare and consume each binding (one consumer per queue), retry
                    refused declarations, pause and resume for the byte budget
``rebinding``       SIGHUP: carry out the configuration side's plan
``intake``          a delivery: decode, ``decisions.on_receipt``, settle or start
``inflight``        handlers waiting or running: thread limits, deadlines, call
                    monitors; ``run()``, a handler thread's job
``shares``          each binding's limit of threads (the fair default), its load
``executor``        the handler threads and the wake-up pipe; ``aio``: ``async def``
``settle``          carry out an outcome (``acks``, ``replies``, confirmed copies by
                    ``publisher``)
``telling``         the one place that logs what the decisions say happened
``budget``          bytes in flight (``max_inflight_bytes``), windows, the throttle
``stopping``        the graceful stop; ``recycling``: when a process makes way
``readiness``       READY=1 and the STATUS line (the ``Notifier`` interface)
``events``          what the engine tells its observers (``Listener``, ``Recorder``)
``questions``       questions answered on the loop thread; ``ratelimit``: log floods
==================  ===============================================================

What is decided about a message is decided in ``rpcworker.policy``; the broker's
entities come from ``rpcworker.amqp``; the engine never reads the configuration
files (``rpcworker.config`` hands it values and plans).
"""
