"""Every decision about a delivery, as pure functions: what happens to it, and why.

===============  ==================================================================
``decisions``    the ack policy: on receipt, on completion, timed out, completed,
                 resolved for the queue, a copy refused -> ``Outcome``
``outcomes``     ``Delivery``, ``Action``, ``Outcome`` and the ``Note``s of what
                 happened (worded and logged by ``engine.telling``)
``dispatcher``   the handler method for a request (oslo's rules) and the call
``failures``     the copies that carry a failed message on (retry, parking, count)
``filters``      a notification binding's filters
``dedup``        the ids of completed requests, so a redelivery is not run twice
===============  ==================================================================

Decides, never carries out and never logs: the engine does both.
"""
