"""Bytes <-> values: what a delivery decodes to and what goes back. Pure, no I/O.

===============  ==================================================================
``decoding``     a delivery -> ``Request`` (oslo RPC, plain AMQP RPC, event,
                 notification) or ``Rejected``, never an exception
``envelope``     oslo.messaging's envelope 2.0, strict JSON, the request and
                 notification dicts as oslo builds them
``replyformat``  replies encoded (result, failure, heartbeat) and read as a caller
                 reads them (``parse_reply``, ``ReplyWaiter``)
``xheaders``     rpcworker's own headers (retries, redeliveries, parked-from) and the
                 broker's delivery count
``message``      ``Message``, what ``handle_message()`` receives
``logfields``    how a log line names a message: words, ids, ``extra`` fields
===============  ==================================================================

The bottom of the package (with ``rpcworker.errors``): it imports nothing else of it.
"""
