"""The engine: one kombu ``ConsumerMixin`` loop per worker process, one room per role.

========================  =============================================================
``worker``                the ``ConsumerMixin``: kombu's template filled in, reconnects,
                          stop (drain), SIGHUP, readiness; questions for the loop thread
``session``               one connection's I/O: select() on the socket and the wake pipe
``subscriptions``         declare, consume (one consumer per queue), retry refused
                          declarations, retire and re-bind on SIGHUP
``intake``                a delivery: decode, ``policy.on_receipt``, settle or start
``inflight``              running handlers: tokens, generations, deadlines, call monitors
``settle``                carry out an outcome (``acks``, ``replies``, confirmed copies)
``budget``                bytes in flight (``max_inflight_bytes``), windows, the throttle
========================  =============================================================

What is decided about a message is decided in ``rpcworker.policy.decisions``; the handler method
is found and called by ``rpcworker.policy.dispatcher``; kombu's internals are reached only
through ``rpcworker.amqp.transport``.
"""
