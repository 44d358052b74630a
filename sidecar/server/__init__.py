"""The process edge: gRPC (Check, ALS, health, reflection, Explain) and admin HTTP.

Envoy protobuf types are used only in this package.
"""
