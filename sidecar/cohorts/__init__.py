"""Behavioural cohorts beyond the Check path: the Envoy access-log receiver
(response-code cohorts), membership notifications (webhook, email) and the
operator's view of current members (admin API, gauge)."""
