"""The configuration: the conf file -> frozen values. Nothing here talks to the broker.

================  =================================================================
``opts``          every option, and ``list_opts()`` for oslo-config-generator
``conffile``      ``prepare(argv)`` -> a private ConfigOpts; value checks; logging
``bindingconf``   the ``[binding:NAME]`` groups -> ``[Binding]``, validated (exit 2)
``handlerapi``    the plugin API's rules: a handler's RPC methods and priorities
``plugins``       stevedore loading (fail fast), ``--list-handlers``, priorities resolved
``reloadplan``    SIGHUP: re-read the files, the plan of what changed
================  =================================================================

Below the policy and the engine: nothing here imports them.
"""
