"""The marketers' web page (``rapport ui``): overview, segments, list builder, lists,
customer and results, server-rendered, signed in with the service's API keys.

Same layer as ``serving``: imports ``features``, ``models`` and ``serving.auth`` (the keys),
never ``training``."""
