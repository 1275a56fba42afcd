"""The parking lot, as the daemon and the operator's client both see it. Pure.

==========  =======================================================================
``parked``  a parked message: where from, why, what it asked for; its export form
            and the copy a replay publishes
``lots``    which queues are whose parking lot
==========  =======================================================================

Reading a lot in place and moving messages out of it is the client's
(``client.browse``): it reads with the client's connection and exit statuses.
"""
