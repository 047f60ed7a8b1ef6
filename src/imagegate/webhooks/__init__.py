"""Webhooks: users register URLs; every event of theirs is POSTed there, signed as the
Standard Webhooks specification says, retried with backoff, never to an internal address.

- :mod:`.routes`: ``/v1/webhooks`` (register, list, delete, deliveries);
- :mod:`.ssrf`: which addresses a webhook may reach, and resolving a host to checked ones;
- :mod:`.signing`: secrets and the ``webhook-*`` headers;
- :mod:`.deliveries`: the tables' queries (webhooks, the delivery queue, the retry schedule);
- :mod:`.handler`: the "*" event handler that queues one delivery per matching webhook;
- :mod:`.delivery`: sending one delivery over HTTP, and the loop that sends due ones.
"""
