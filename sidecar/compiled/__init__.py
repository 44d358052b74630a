"""The policy as executed: compiled once from the model into immutable objects."""
