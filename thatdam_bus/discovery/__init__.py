"""Discovery over mDNS: every node advertises one ``_thatdam._tcp.local.`` record and browses its cluster's.

mDNS is a hint for finding the infrastructure (RabbitMQ, Redis), never a source of truth: membership stays the
heartbeats, leadership the lease, and credentials never travel in a record.

* ``records``: the TXT record (encoding, decoding, endpoints without credentials) and the cloud-control hint;
* ``addresses``: which local addresses peers can reach (what we advertise and where mDNS speaks);
* ``advertiser``: registers, updates and withdraws this process's record;
* ``browser``: follows the records of the cluster and picks the endpoints to adopt;
* ``service``: ``open_discovery``, the one object a node (or ``thatdam advertise-infra``) holds.

Importing this package imports nothing heavy; zeroconf is loaded by ``service``.
"""
