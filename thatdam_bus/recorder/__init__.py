"""The flight recorder: every event on the exchange also kept in a bounded, replayable log.

* RabbitMQ: a stream queue ``<prefix>.recorder`` bound to ``#`` (``amqp_stream``), declared by the leader;
* solo: segment files under ``<state dir>/recorder/`` written by the node's recorder service (``disk_ring``).

``replay`` reads either from a chosen point (``--since``, ``--last``, ``--from-start``) and keeps following it
live, which is what makes bus-tail's history-then-live output free of gaps and duplicates by construction.
"""
