"""Side runners for ``python -m bench redis_peers``: our Redis broker, a bare loop, and the peers.

Each module here measures one *side* and is run by :mod:`bench.redis_peers` as a fresh
subprocess::

    PYTHON -m bench.peers MODULE JSON_KWARGS

It starts the side's worker processes with the side's own command line (4 worker threads in one
process where the library has threads), warms them up, runs the workloads one after the other
against those workers, stops them, deletes its keys, and prints one JSON line (see
:func:`bench.peers._common.main`).

``ours`` and ``bare`` run in the project's virtualenv; ``rq_peer``, ``dramatiq_peer``,
``celery_peer``, ``arq_peer`` and ``huey_peer`` run in ``bench/.peers`` (``make bench-peers``
creates it from ``bench/peers/requirements.txt``). The peers are not dependencies of the
project: nothing outside this folder imports them, and ``_common`` needs only redis-py.
"""
