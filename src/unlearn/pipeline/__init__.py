"""The stages of the API's jobs: validation, corpora, the run in phases, sequential requests, launch, evaluation,
fine-tuning. :mod:`unlearn.api` is the public facade over them."""
