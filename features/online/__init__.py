"""The online feature store: one customer's record, its evaluator, the backends, the
bulk load from the warehouse and the live events that update it.

- :mod:`features.online.record`: the record format and the evaluator (the spec on one
  customer's events, numpy);
- :mod:`features.online.store`: the SQLite and Redis backends;
- :mod:`features.online.materialize`: the bulk load from the warehouse;
- :mod:`features.online.events`: live events and decisions applied to records, and the
  outbox that carries them to the warehouse.
"""
