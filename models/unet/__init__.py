"""The liver UNET: configuration (`config`), network and losses (`model`), input pipeline (`data`),
and the Trainer module file (`trainer`, with `run_fn`)."""
