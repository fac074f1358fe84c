"""grpopp.recipes: built-in run configs (``*.yaml``) and ``tiny``, the project's own tiny model
(tokenizer, Llama config and warm start) that tests and the default recipe train on a CPU."""
