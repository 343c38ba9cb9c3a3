"""One module per stage, each `run(ctx) -> result` over a `metaprune.context.Context`:

    train_base -> train_pruningnet -> search -> finetune -> quantize -> export

`metaprune.pipeline` lists them; a new stage is a module here and a line there.
"""
