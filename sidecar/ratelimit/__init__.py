"""Rate-limit arithmetic (``algorithms``) and the RateLimit response headers (``headers``)."""
