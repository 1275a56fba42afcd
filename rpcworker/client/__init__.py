"""``rpcworker-client``, the operator's tool (the command is ``rpcworker.cmd.client``).

=============  ====================================================================
``args``       the command line: parser, argument types, oslo.config arguments
``request``    the request asked for, and its oslo.messaging message
``session``    the broker connection: connect, declare, publish with confirms
``commands``   call (reply queue, waiting), cast, fanout, publish
``load``       ``--count``: many requests over several connections, one summary
``errors``     exit statuses, the errors that carry them, reporting on stderr
=============  ====================================================================

Replies are read with ``rpcworker.wire.replyformat.ReplyWaiter``, as the test kit reads them.
"""
