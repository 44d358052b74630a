"""The request pipeline: context, verdicts, the Step protocol and the engine."""
