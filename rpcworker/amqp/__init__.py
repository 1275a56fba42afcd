"""Everything that talks to the broker through kombu / py-amqp, but the loop itself.

===============  ==================================================================
``broker``       ``[broker]`` / ``transport_url`` -> settings and a ``kombu.Connection``
``transport``    what a transport can do (``Capabilities``), and the one seam to
                 kombu's and py-amqp's internals (read-ahead, frame reads, failover)
``readahead``    one large ``recv()`` for py-amqp's three small reads per frame
``topology``     ``Binding`` -> the exchanges, queues, delay queues and parking lot it
                 declares
``brokercheck``  ``--check-config --broker``: the broker's entities against the config
===============  ==================================================================
"""
