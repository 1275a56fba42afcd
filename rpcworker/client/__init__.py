"""``rpcworker-client``, the operator's tool (the command is ``rpcworker.cmd.client``).

==============  ===================================================================
``args``        the command line: parser, argument types, oslo.config arguments
``request``     the request asked for, and its oslo.messaging message
``connect``     the broker connection: connect, declare, publish with confirms
``commands``    call (reply queue, waiting), cast, fanout, publish
``load``        ``--count``: many requests over several connections, one summary
``parkedcmds``  ``parked list | replay | purge | export``, and which lots to read
``browse``      reading a parking lot in place, moving messages out with confirms
``exits``       exit statuses, the errors that carry them, reporting on stderr
==============  ===================================================================

Replies are read with ``rpcworker.wire.replyformat.ReplyWaiter``, as the test kit reads them.
"""
