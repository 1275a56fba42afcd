"""The console entry points: ``rpcworker`` (``daemon``) and ``rpcworker-client``
(``client``)."""
